/*
 * coherence.pml: the Aquifer CXL ownership/publish protocol on memory
 * without inter-host cache coherence (docs/coherence.md).
 *
 * Two hosts, W (the owner/writer, host 0) and R (a reader, host 1), share
 * three 64-byte lines of a CXL device: G (the descriptor line, whose only
 * modelled field is the generation) and D0, D1 (the extent's data). Each host
 * has a private write-back cache. Hardware freedom is modelled by the Chaos
 * process, which at ANY moment may:
 *   - evict any line of any host (a dirty line is written back first),
 *   - prefetch any line into any host's cache from the device,
 *   - complete any pending CLWB/CLFLUSHOPT early.
 * CLWB (flush) and CLFLUSHOPT (invalidate) only mark a line pending; a fence
 * (SFENCE for the writer, MFENCE for the reader) completes every pending
 * operation of its host. A crash of the writer drops its dirty lines.
 *
 * The writer publishes version 1 (gen 2) and then rewrites the SAME extent as
 * version 2 (gen 4). Rewriting in place is the worst case of extent reuse: in
 * the implementation reuse waits for epoch-based reclamation, but a fenced
 * (lease-expired) reader, or a reclamation bug, can still race with it, and
 * the reader's re-validation must make that race harmless.
 *
 * The payload hash the implementation also checks is deliberately NOT
 * modelled: the ordering steps alone must be correct.
 *
 * Negative variants (each must yield a counterexample), selected with -D:
 *   NO_WRITER_FLUSH      writer does not CLWB the data lines
 *   NO_WRITER_FENCE      no SFENCE between data flush and the gen store
 *   NO_READER_INVALIDATE reader does not invalidate the data lines
 *   NO_VALIDATION        reader does not re-check gen after copying data
 *   INVALIDATE_EARLY     reader invalidates the data BEFORE loading gen (a
 *                        prefetch can slip in between)
 * Non-vacuity check (must also yield a counterexample):
 *   CHECK_ACCEPTS        asserts the reader never accepts a copy; the
 *                        violation proves that successful reads are reachable,
 *                        so the full model's assertions are not vacuous.
 */

#define NH 2
#define NL 3
#define G  0
#define D0 1
#define D1 2
#define W  0
#define R  1

byte mem[NL];                 /* device contents */
typedef Cache { byte val[NL]; bit valid[NL]; bit dirty[NL]; bit pflush[NL]; bit pinval[NL] };
Cache c[NH];
bit crashed;                  /* writer crashed */
byte published;               /* ghost: highest even gen durably visible */
byte accepted;                /* ghost: number of reads the reader accepted */
byte finished;                /* hosts that have finished */

inline writeback(h, l) {
	if
	:: c[h].dirty[l] -> mem[l] = c[h].val[l]; c[h].dirty[l] = 0
	:: else -> skip
	fi
}

/* completion of a pending flush (CLWB keeps the line cached) */
inline complete(h, l) {
	if
	:: c[h].pflush[l] -> writeback(h, l); c[h].pflush[l] = 0
	:: else -> skip
	fi;
	if
	:: c[h].pinval[l] -> writeback(h, l); c[h].valid[l] = 0; c[h].pinval[l] = 0
	:: else -> skip
	fi
}

inline load(h, l, v) {
	atomic {
		if
		:: c[h].valid[l] -> v = c[h].val[l]
		:: else -> v = mem[l]; c[h].val[l] = v; c[h].valid[l] = 1
		fi
	}
}

inline store(h, l, v) {
	atomic { c[h].val[l] = v; c[h].valid[l] = 1; c[h].dirty[l] = 1 }
}

inline flush(h, l)      { c[h].pflush[l] = 1 }
inline invalidate(h, l) { c[h].pinval[l] = 1 }

inline fence(h) {
	atomic { complete(h, G); complete(h, D0); complete(h, D1) }
}

/* the writer may crash before any step: its dirty lines and pending
 * write-backs are lost, and it stops */
inline maycrash() {
	if
	:: atomic { !crashed ->
		crashed = 1;
		c[W].dirty[G] = 0; c[W].dirty[D0] = 0; c[W].dirty[D1] = 0;
		c[W].pflush[G] = 0; c[W].pflush[D0] = 0; c[W].pflush[D1] = 0;
		c[W].valid[G] = 0; c[W].valid[D0] = 0; c[W].valid[D1] = 0 };
		goto wdone
	:: skip
	fi
}

inline publish(v) {
	/* 1. descriptor to an odd generation (WRITING), durable before data */
	maycrash(); store(W, G, 2*v - 1);
	flush(W, G); fence(W);
	/* 2. copy the extent, write it back */
	maycrash(); store(W, D0, v);
	maycrash(); store(W, D1, v);
#ifndef NO_WRITER_FLUSH
	flush(W, D0); flush(W, D1);
#endif
#ifndef NO_WRITER_FENCE
	maycrash(); fence(W);
#endif
	/* 3. descriptor to the even generation (PUBLISHED) */
	maycrash(); store(W, G, 2*v);
	flush(W, G); fence(W);
	atomic { published = 2*v }
}

active proctype Writer() {
	publish(1);
	publish(2);
wdone:	finished++
}

active proctype Reader() {
	byte g1, g2, d0, d1, p0, tries;
	do
	:: tries < 3 ->
		tries++;
		p0 = published;
#ifdef INVALIDATE_EARLY
		invalidate(R, D0); invalidate(R, D1); fence(R);
#endif
		/* 1. invalidate-then-load the descriptor */
		invalidate(R, G); fence(R);
		load(R, G, g1);
		/* freshness: a descriptor published before this attempt began
		 * must be seen (or a later one) */
		assert(g1 >= p0 || (g1 & 1) == 1);
		if
		:: (g1 == 0 || (g1 & 1) == 1) -> goto retry   /* nothing / WRITING */
		:: else -> skip
		fi;
		/* 2. only after observing gen: invalidate and copy the extent */
#if !defined(NO_READER_INVALIDATE) && !defined(INVALIDATE_EARLY)
		invalidate(R, D0); invalidate(R, D1); fence(R);
#endif
		load(R, D0, d0);
		load(R, D1, d1);
		/* 3. re-validate: gen unchanged after the copy */
#ifndef NO_VALIDATION
		invalidate(R, G); fence(R);
		load(R, G, g2);
		if
		:: g2 != g1 -> goto retry
		:: else -> skip
		fi;
#endif
		/* accepted: the copy must be exactly the version gen names */
		assert(d0 == g1 / 2 && d1 == g1 / 2);
		accepted++;
retry:		skip
	:: else -> break   /* bounded retries, then fall back to the RDMA tier */
	od;
#ifdef CHECK_ACCEPTS
	assert(accepted == 0);
#endif
	finished++
}

/* Hardware freedom. Only actions that can change what anyone observes are
 * generated: the writer never loads, so prefetching or dropping its clean
 * lines is invisible; the reader never stores, so its lines are never dirty.
 * Chaos stops once both hosts are done. */
active proctype Chaos() {
	do
	:: finished == 2 -> break
	:: atomic { c[W].dirty[G] -> writeback(W, G) }           /* writer: dirty G evicted early */
	:: atomic { c[W].pflush[G] -> complete(W, G) }           /* writer: CLWB of G completes early */
	:: atomic { !c[R].valid[G] -> c[R].val[G] = mem[G]; c[R].valid[G] = 1 }  /* reader: prefetch G */
	:: atomic { c[R].valid[G] -> c[R].valid[G] = 0; c[R].pinval[G] = 0 }     /* reader: G evicted / CLFLUSHOPT done */
	:: atomic { c[W].dirty[D0] -> writeback(W, D0) }           /* writer: dirty D0 evicted early */
	:: atomic { c[W].pflush[D0] -> complete(W, D0) }           /* writer: CLWB of D0 completes early */
	:: atomic { !c[R].valid[D0] -> c[R].val[D0] = mem[D0]; c[R].valid[D0] = 1 }  /* reader: prefetch D0 */
	:: atomic { c[R].valid[D0] -> c[R].valid[D0] = 0; c[R].pinval[D0] = 0 }     /* reader: D0 evicted / CLFLUSHOPT done */
	:: atomic { c[W].dirty[D1] -> writeback(W, D1) }           /* writer: dirty D1 evicted early */
	:: atomic { c[W].pflush[D1] -> complete(W, D1) }           /* writer: CLWB of D1 completes early */
	:: atomic { !c[R].valid[D1] -> c[R].val[D1] = mem[D1]; c[R].valid[D1] = 1 }  /* reader: prefetch D1 */
	:: atomic { c[R].valid[D1] -> c[R].valid[D1] = 0; c[R].pinval[D1] = 0 }     /* reader: D1 evicted / CLFLUSHOPT done */
	od
}
