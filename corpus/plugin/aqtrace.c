/*
 * aqtrace: a QEMU TCG plugin that records the first read, the first write and
 * the first instruction fetch of every 4 KiB page of guest RAM, each with the
 * guest instruction count and the host wall-clock time at which it happened.
 *
 * Built by the corpus pipeline with gcc against corpus/plugin/qemu_plugin_api.h
 * (Aquifer's own declarations of the stable plugin API v1). Loaded with
 *
 *   -plugin aqtrace.so,ctl=CTL,out=OUT,mem=MEMPATH,pages=N
 *
 * Arming is done from the host, at the snapshot point, through the control
 * file CTL, which a helper thread polls every 200 us:
 *   "arm"  - locate the RAM file's mapping, start recording, ack "armed";
 *   "stop" - stop recording, write OUT (temp file + rename), ack "stopped".
 * Acks are written to CTL.ack (temp file + rename). The host pauses the vCPU
 * over QMP before sending "stop", so no callback races the writer.
 *
 * The guest ends the window itself: its runner stores to the marker page
 * (virtual address AQ_MARK_VADDR, mapped by the runner after init()) once the
 * invocation's output is out, before it says AQ-DONE, so the host never
 * pauses the vCPU before the store. The store is logged as "mark"; without
 * it the window would end when the host got round to pausing the vCPU, and
 * what the idle guest touched meanwhile (timer and serial interrupts) would
 * depend on how loaded the host was. First touches after the mark are still
 * logged (after the mark line): they are the idle guest's, outside the
 * window, and explain pages that changed after the invocation.
 *
 * Page numbers are offsets in the guest RAM file divided by 4096:
 *   data accesses: qemu_plugin_hwaddr_phys_addr, which QEMU 7.2 computes as the
 *                  offset inside the RAM block (pc.ram starts at 0), so it is
 *                  the file offset for guests below the PCI hole;
 *   fetches:       qemu_plugin_insn_haddr minus the host address at which QEMU
 *                  mapped the RAM file (found in /proc/self/maps).
 * Pages beyond N (ROMs, other RAM blocks) are ignored.
 *
 * Output (text, one record a line):
 *   aqtrace 1
 *   pages N
 *   armed INSN NS
 *   KIND PAGE INSN NS        KIND is r, w or x
 *   mark INSN NS             at most once: the window's end (the guest's)
 *   KIND PAGE INSN NS        after the window
 *   stop INSN NS
 */
#define _GNU_SOURCE
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "qemu_plugin_api.h"

AQ_QEMU_PLUGIN_EXPORT int qemu_plugin_version = AQ_QEMU_PLUGIN_VERSION;

#define PAGE_SHIFT 12
/* The runner's marker page (corpus/guest/runner.py, MARK_VADDR). */
#define AQ_MARK_VADDR 0x5a5a00000000ull
#define MAX_MAPS 8

struct rec {
	uint64_t page;
	uint64_t insn;
	uint64_t ns;
	char kind;
};

struct map {
	uintptr_t start, end;
	uint64_t off;
};

static char *ctl_path, *out_path, *mem_path;
static uint64_t npages;
static uint8_t *seen; /* per page: bit0 r, bit1 w, bit2 x */
static struct rec *recs;
static size_t nrecs, caprecs;
static volatile int armed;
static int written;
static uint64_t insn_count; /* updated inline at every TB entry */
static uint64_t armed_insn, armed_ns, stop_insn, stop_ns;
static int marked;        /* the guest ended the window */
static size_t mark_rec;   /* records before the mark */
static uint64_t mark_insn, mark_ns;
static struct map maps[MAX_MAPS];
static int nmaps;
static int dropped;
/*
 * Per-TB cache of the last virtual page read and written: within one TB the
 * virtual-to-physical mapping cannot change (CR3 writes and INVLPG end the
 * TB), so a repeated access to the same virtual page needs no lookup.
 * Reset by the exec callback at every TB entry.
 */
static uint64_t last_rv = UINT64_MAX, last_wv = UINT64_MAX;

struct tbinfo {
	int n;
	uintptr_t h[4];
};

static uint64_t now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static void record(uint64_t page, int bit, char kind)
{
	if (page >= npages || (seen[page] & bit))
		return;
	seen[page] |= bit;
	if (nrecs == caprecs) {
		size_t nc = caprecs ? caprecs * 2 : 65536;
		struct rec *nr = realloc(recs, nc * sizeof(*recs));
		if (!nr) {
			dropped++;
			return;
		}
		recs = nr;
		caprecs = nc;
	}
	recs[nrecs].page = page;
	recs[nrecs].insn = insn_count;
	recs[nrecs].ns = now_ns();
	recs[nrecs].kind = kind;
	nrecs++;
}

static void vcpu_mem(unsigned int vcpu, qemu_plugin_meminfo_t info, uint64_t vaddr, void *udata)
{
	(void)vcpu;
	(void)udata;
	if (!armed)
		return;
	int store = qemu_plugin_mem_is_store(info);
	uint64_t vp = vaddr >> PAGE_SHIFT;
	if (store && vp == AQ_MARK_VADDR >> PAGE_SHIFT) {
		if (!marked) {
			marked = 1;
			mark_rec = nrecs;
			mark_insn = insn_count;
			mark_ns = now_ns();
		}
		return;
	}
	unsigned size = 1u << qemu_plugin_mem_size_shift(info);
	int crosses = ((vaddr & 0xfff) + size) > 0x1000;
	if (!crosses && vp == (store ? last_wv : last_rv))
		return;
	struct qemu_plugin_hwaddr *hw = qemu_plugin_get_hwaddr(info, vaddr);
	if (!hw || qemu_plugin_hwaddr_is_io(hw))
		return;
	uint64_t pa = qemu_plugin_hwaddr_phys_addr(hw);
	record(pa >> PAGE_SHIFT, store ? 2 : 1, store ? 'w' : 'r');
	if (!crosses) {
		if (store)
			last_wv = vp;
		else
			last_rv = vp;
	} else {
		/* The access crosses into the next virtual page. */
		struct qemu_plugin_hwaddr *hw2 = qemu_plugin_get_hwaddr(info, vaddr + size - 1);
		if (hw2 && !qemu_plugin_hwaddr_is_io(hw2))
			record(qemu_plugin_hwaddr_phys_addr(hw2) >> PAGE_SHIFT, store ? 2 : 1,
			       store ? 'w' : 'r');
	}
}

static int host_to_page(uintptr_t h, uint64_t *page)
{
	for (int i = 0; i < nmaps; i++) {
		if (h >= maps[i].start && h < maps[i].end) {
			*page = (h - maps[i].start + maps[i].off) >> PAGE_SHIFT;
			return 1;
		}
	}
	return 0;
}

static void vcpu_tb_exec(unsigned int vcpu, void *udata)
{
	(void)vcpu;
	last_rv = last_wv = UINT64_MAX;
	if (!armed)
		return;
	struct tbinfo *ti = udata;
	for (int i = 0; i < ti->n; i++) {
		uint64_t page;
		if (host_to_page(ti->h[i], &page))
			record(page, 4, 'x');
	}
}

static void add_page(struct tbinfo *ti, uintptr_t h)
{
	if (!h)
		return;
	h &= ~(uintptr_t)0xfff;
	for (int i = 0; i < ti->n; i++)
		if (ti->h[i] == h)
			return;
	if (ti->n < 4)
		ti->h[ti->n++] = h;
}

static void vcpu_tb_trans(qemu_plugin_id_t id, struct qemu_plugin_tb *tb)
{
	(void)id;
	size_t n = qemu_plugin_tb_n_insns(tb);
	struct tbinfo *ti = calloc(1, sizeof(*ti));
	for (size_t i = 0; i < n; i++) {
		struct qemu_plugin_insn *insn = qemu_plugin_tb_get_insn(tb, i);
		uintptr_t h = (uintptr_t)qemu_plugin_insn_haddr(insn);
		size_t sz = qemu_plugin_insn_size(insn);
		if (h) {
			add_page(ti, h);
			if (sz > 0)
				add_page(ti, h + sz - 1);
		}
		qemu_plugin_register_vcpu_mem_cb(insn, vcpu_mem, QEMU_PLUGIN_CB_NO_REGS, QEMU_PLUGIN_MEM_RW,
						 NULL);
	}
	qemu_plugin_register_vcpu_tb_exec_inline(tb, QEMU_PLUGIN_INLINE_ADD_U64, &insn_count, n);
	/* Registered for every TB: it also resets the per-TB page cache. */
	if (ti)
		qemu_plugin_register_vcpu_tb_exec_cb(tb, vcpu_tb_exec, QEMU_PLUGIN_CB_NO_REGS, ti);
}

static int load_maps(void)
{
	FILE *f = fopen("/proc/self/maps", "r");
	if (!f)
		return -1;
	char line[4096];
	nmaps = 0;
	while (fgets(line, sizeof(line), f) && nmaps < MAX_MAPS) {
		unsigned long start, end, off;
		char perms[8];
		int pos = 0;
		if (sscanf(line, "%lx-%lx %7s %lx %*s %*s %n", &start, &end, perms, &off, &pos) < 4)
			continue;
		char *path = line + pos;
		path[strcspn(path, "\n")] = 0;
		if (strcmp(path, mem_path) != 0)
			continue;
		maps[nmaps].start = start;
		maps[nmaps].end = end;
		maps[nmaps].off = off;
		nmaps++;
	}
	fclose(f);
	return nmaps > 0 ? 0 : -1;
}

static int write_atomic(const char *path, const char *data, size_t len)
{
	char tmp[4352];
	snprintf(tmp, sizeof(tmp), "%s.tmp", path);
	FILE *f = fopen(tmp, "w");
	if (!f)
		return -1;
	if (fwrite(data, 1, len, f) != len) {
		fclose(f);
		return -1;
	}
	fflush(f);
	fsync(fileno(f));
	fclose(f);
	return rename(tmp, path);
}

static void ack(const char *what)
{
	char p[4352];
	snprintf(p, sizeof(p), "%s.ack", ctl_path);
	write_atomic(p, what, strlen(what));
}

static void write_trace(void)
{
	if (written)
		return;
	written = 1;
	char tmp[4352];
	snprintf(tmp, sizeof(tmp), "%s.tmp", out_path);
	FILE *f = fopen(tmp, "w");
	if (!f) {
		qemu_plugin_outs("aqtrace: cannot create output file\n");
		return;
	}
	setvbuf(f, NULL, _IOFBF, 1 << 20);
	fprintf(f, "aqtrace 1\npages %" PRIu64 "\narmed %" PRIu64 " %" PRIu64 "\n", npages, armed_insn,
		armed_ns);
	for (size_t i = 0; i < nrecs; i++) {
		if (marked && i == mark_rec)
			fprintf(f, "mark %" PRIu64 " %" PRIu64 "\n", mark_insn, mark_ns);
		fprintf(f, "%c %" PRIu64 " %" PRIu64 " %" PRIu64 "\n", recs[i].kind, recs[i].page,
			recs[i].insn, recs[i].ns);
	}
	if (marked && mark_rec == nrecs)
		fprintf(f, "mark %" PRIu64 " %" PRIu64 "\n", mark_insn, mark_ns);
	if (dropped)
		fprintf(f, "dropped %d\n", dropped);
	fprintf(f, "stop %" PRIu64 " %" PRIu64 "\n", stop_insn, stop_ns);
	fflush(f);
	fsync(fileno(f));
	fclose(f);
	rename(tmp, out_path);
}

static void *poller(void *arg)
{
	(void)arg;
	char buf[64];
	for (;;) {
		usleep(200);
		FILE *f = fopen(ctl_path, "r");
		if (!f)
			continue;
		size_t n = fread(buf, 1, sizeof(buf) - 1, f);
		fclose(f);
		buf[n] = 0;
		if (!armed && !written && strncmp(buf, "arm", 3) == 0 && armed_ns == 0) {
			if (load_maps() != 0) {
				ack("error: guest RAM file not mapped\n");
				continue;
			}
			armed_insn = insn_count;
			armed_ns = now_ns();
			armed = 1;
			__sync_synchronize();
			ack("armed\n");
		} else if (strncmp(buf, "stop", 4) == 0 && !written) {
			armed = 0;
			__sync_synchronize();
			stop_insn = insn_count;
			stop_ns = now_ns();
			write_trace();
			ack("stopped\n");
			return NULL;
		}
	}
}

static void at_exit(qemu_plugin_id_t id, void *p)
{
	(void)id;
	(void)p;
	if (!written && armed) {
		armed = 0;
		stop_insn = insn_count;
		stop_ns = now_ns();
		write_trace();
	}
}

AQ_QEMU_PLUGIN_EXPORT int qemu_plugin_install(qemu_plugin_id_t id, const qemu_info_t *info, int argc,
					      char **argv)
{
	(void)info;
	for (int i = 0; i < argc; i++) {
		char *eq = strchr(argv[i], '=');
		if (!eq)
			continue;
		*eq = 0;
		char *k = argv[i], *v = eq + 1;
		if (!strcmp(k, "ctl"))
			ctl_path = strdup(v);
		else if (!strcmp(k, "out"))
			out_path = strdup(v);
		else if (!strcmp(k, "mem"))
			mem_path = strdup(v);
		else if (!strcmp(k, "pages"))
			npages = strtoull(v, NULL, 10);
		*eq = '=';
	}
	if (!ctl_path || !out_path || !mem_path || npages == 0) {
		qemu_plugin_outs("aqtrace: need ctl=, out=, mem= and pages= arguments\n");
		return -1;
	}
	seen = calloc(npages, 1);
	if (!seen)
		return -1;
	pthread_t t;
	if (pthread_create(&t, NULL, poller, NULL) != 0)
		return -1;
	pthread_detach(t);
	qemu_plugin_register_vcpu_tb_trans_cb(id, vcpu_tb_trans);
	qemu_plugin_register_atexit_cb(id, at_exit, NULL);
	return 0;
}
