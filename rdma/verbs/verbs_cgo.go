//go:build rdma && cgo

package verbs

/*
#cgo LDFLAGS: -libverbs
#include <infiniband/verbs.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>

static int aq_device_count(int *err) {
	int n = 0;
	errno = 0;
	struct ibv_device **l = ibv_get_device_list(&n);
	if (!l) { *err = errno; return -1; }
	ibv_free_device_list(l);
	return n;
}

static struct ibv_context *aq_open(const char *name, int *err) {
	int n = 0;
	errno = 0;
	struct ibv_device **l = ibv_get_device_list(&n);
	if (!l) { *err = errno; return NULL; }
	struct ibv_context *ctx = NULL;
	for (int i = 0; i < n; i++) {
		if (name[0] == 0 || strcmp(ibv_get_device_name(l[i]), name) == 0) {
			ctx = ibv_open_device(l[i]);
			if (!ctx) *err = errno;
			break;
		}
	}
	if (!ctx && *err == 0) *err = ENODEV;
	ibv_free_device_list(l);
	return ctx;
}

static const char *aq_device_name(int i) {
	int n = 0;
	struct ibv_device **l = ibv_get_device_list(&n);
	if (!l || i >= n) { if (l) ibv_free_device_list(l); return NULL; }
	const char *s = strdup(ibv_get_device_name(l[i]));
	ibv_free_device_list(l);
	return s;
}

static int aq_port(struct ibv_context *ctx, int port, uint16_t *lid, int *mtu, int *link) {
	struct ibv_port_attr a;
	memset(&a, 0, sizeof a);
	int rc = ibv_query_port(ctx, (uint8_t)port, &a);
	if (rc) return rc;
	*lid = a.lid; *mtu = a.active_mtu; *link = a.link_layer;
	return 0;
}

static int aq_gid(struct ibv_context *ctx, int port, int index, uint8_t *out) {
	union ibv_gid g;
	int rc = ibv_query_gid(ctx, (uint8_t)port, index, &g);
	if (rc) return rc;
	memcpy(out, g.raw, 16);
	return 0;
}

static struct ibv_qp *aq_create_qp(struct ibv_pd *pd, struct ibv_cq *cq, int depth) {
	struct ibv_qp_init_attr a;
	memset(&a, 0, sizeof a);
	a.send_cq = cq; a.recv_cq = cq;
	a.cap.max_send_wr = depth; a.cap.max_recv_wr = 1;
	a.cap.max_send_sge = 1; a.cap.max_recv_sge = 1;
	a.qp_type = IBV_QPT_RC;
	a.sq_sig_all = 0; // selective signalling
	return ibv_create_qp(pd, &a);
}

static int aq_qp_init(struct ibv_qp *qp, int port) {
	struct ibv_qp_attr a;
	memset(&a, 0, sizeof a);
	a.qp_state = IBV_QPS_INIT; a.pkey_index = 0; a.port_num = port;
	a.qp_access_flags = IBV_ACCESS_LOCAL_WRITE | IBV_ACCESS_REMOTE_READ;
	return ibv_modify_qp(qp, &a, IBV_QP_STATE | IBV_QP_PKEY_INDEX | IBV_QP_PORT | IBV_QP_ACCESS_FLAGS);
}

static int aq_qp_rtr(struct ibv_qp *qp, int port, int mtu, uint32_t dqpn, uint32_t rpsn,
                     uint16_t dlid, const uint8_t *dgid, int use_gid, int sgid_index) {
	struct ibv_qp_attr a;
	memset(&a, 0, sizeof a);
	a.qp_state = IBV_QPS_RTR; a.path_mtu = mtu; a.dest_qp_num = dqpn; a.rq_psn = rpsn;
	a.max_dest_rd_atomic = 16; a.min_rnr_timer = 12;
	a.ah_attr.dlid = dlid; a.ah_attr.port_num = port;
	if (use_gid) {
		a.ah_attr.is_global = 1;
		memcpy(a.ah_attr.grh.dgid.raw, dgid, 16);
		a.ah_attr.grh.sgid_index = sgid_index;
		a.ah_attr.grh.hop_limit = 64;
	}
	return ibv_modify_qp(qp, &a, IBV_QP_STATE | IBV_QP_AV | IBV_QP_PATH_MTU | IBV_QP_DEST_QPN |
		IBV_QP_RQ_PSN | IBV_QP_MAX_DEST_RD_ATOMIC | IBV_QP_MIN_RNR_TIMER);
}

static int aq_qp_rts(struct ibv_qp *qp, uint32_t psn) {
	struct ibv_qp_attr a;
	memset(&a, 0, sizeof a);
	a.qp_state = IBV_QPS_RTS; a.timeout = 14; a.retry_cnt = 7; a.rnr_retry = 7;
	a.sq_psn = psn; a.max_rd_atomic = 16;
	return ibv_modify_qp(qp, &a, IBV_QP_STATE | IBV_QP_TIMEOUT | IBV_QP_RETRY_CNT |
		IBV_QP_RNR_RETRY | IBV_QP_SQ_PSN | IBV_QP_MAX_QP_RD_ATOMIC);
}

// aq_post_reads chains n RDMA READs, signals only the last and rings the
// doorbell once.
static int aq_post_reads(struct ibv_qp *qp, int n, const uint64_t *laddr, const uint32_t *len,
                         const uint32_t *lkey, const uint64_t *raddr, uint32_t rkey, uint64_t wr_id) {
	struct ibv_send_wr *wr = calloc(n, sizeof *wr);
	struct ibv_sge *sg = calloc(n, sizeof *sg);
	if (!wr || !sg) { free(wr); free(sg); return ENOMEM; }
	for (int i = 0; i < n; i++) {
		sg[i].addr = laddr[i]; sg[i].length = len[i]; sg[i].lkey = lkey[i];
		wr[i].wr_id = wr_id; wr[i].sg_list = &sg[i]; wr[i].num_sge = 1;
		wr[i].opcode = IBV_WR_RDMA_READ;
		wr[i].wr.rdma.remote_addr = raddr[i]; wr[i].wr.rdma.rkey = rkey;
		wr[i].next = (i + 1 < n) ? &wr[i + 1] : NULL;
		wr[i].send_flags = (i + 1 == n) ? IBV_SEND_SIGNALED : 0;
	}
	struct ibv_send_wr *bad = NULL;
	int rc = ibv_post_send(qp, wr, &bad);
	free(wr); free(sg);
	return rc;
}

static int aq_poll(struct ibv_cq *cq, int n, uint64_t *ids, int *status) {
	struct ibv_wc wc[32];
	if (n > 32) n = 32;
	int k = ibv_poll_cq(cq, n, wc);
	for (int i = 0; i < k; i++) { ids[i] = wc[i].wr_id; status[i] = wc[i].status; }
	return k;
}

static const char *aq_wc_str(int s) { return ibv_wc_status_str((enum ibv_wc_status)s); }
*/
import "C"

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"fmt"
	"runtime"
	"sync"
	"syscall"
	"time"
	"unsafe"

	"github.com/aquifer-pool/aquifer/rdma"
)

// Built reports whether the libibverbs backend is compiled in.
const Built = true

// Devices lists the RDMA devices libibverbs sees.
func Devices() ([]string, error) {
	var e C.int
	n := C.aq_device_count(&e)
	if n < 0 {
		return nil, noDevice(fmt.Sprintf("ibv_get_device_list failed: %v", syscall.Errno(e)))
	}
	var out []string
	for i := 0; i < int(n); i++ {
		s := C.aq_device_name(C.int(i))
		if s != nil {
			out = append(out, C.GoString(s))
			C.free(unsafe.Pointer(s))
		}
	}
	return out, nil
}

// Transport is the verbs backend.
type Transport struct {
	cfg  Config
	ctx  *C.struct_ibv_context
	pd   *C.struct_ibv_pd
	lid  uint16
	mtu  C.int
	link C.int
	gid  [16]byte
}

// New opens the device and allocates a protection domain.
func New(cfg Config) (rdma.Transport, error) {
	cfg.defaults()
	devs, err := Devices()
	if err != nil {
		return nil, err
	}
	if len(devs) == 0 {
		return nil, noDevice("ibv_get_device_list returned 0 devices")
	}
	name := C.CString(cfg.Device)
	defer C.free(unsafe.Pointer(name))
	var e C.int
	ctx := C.aq_open(name, &e)
	if ctx == nil {
		return nil, fmt.Errorf("open device %q (have %v): %v", cfg.Device, devs, syscall.Errno(e))
	}
	t := &Transport{cfg: cfg, ctx: ctx}
	if t.pd = C.ibv_alloc_pd(ctx); t.pd == nil {
		C.ibv_close_device(ctx)
		return nil, fmt.Errorf("ibv_alloc_pd failed")
	}
	var lid C.uint16_t
	if rc := C.aq_port(ctx, C.int(cfg.Port), &lid, &t.mtu, &t.link); rc != 0 {
		t.Close()
		return nil, fmt.Errorf("query port %d: %v", cfg.Port, syscall.Errno(rc))
	}
	t.lid = uint16(lid)
	if rc := C.aq_gid(ctx, C.int(cfg.Port), C.int(cfg.GIDIndex), (*C.uint8_t)(unsafe.Pointer(&t.gid[0]))); rc != 0 {
		t.Close()
		return nil, fmt.Errorf("query gid %d: %v", cfg.GIDIndex, syscall.Errno(rc))
	}
	return t, nil
}

// Name implements rdma.Transport.
func (t *Transport) Name() string { return "verbs" }

// Close implements rdma.Transport.
func (t *Transport) Close() error {
	if t.pd != nil {
		C.ibv_dealloc_pd(t.pd)
		t.pd = nil
	}
	if t.ctx != nil {
		C.ibv_close_device(t.ctx)
		t.ctx = nil
	}
	return nil
}

func (t *Transport) reg(buf []byte, access C.int) (*rdma.Registration, error) {
	if len(buf) == 0 {
		return nil, fmt.Errorf("register an empty buffer")
	}
	// buf is mmap'd off-heap memory (package offheap), so passing its
	// address to C does not pass a Go heap pointer.
	mr := C.ibv_reg_mr(t.pd, unsafe.Pointer(unsafe.SliceData(buf)), C.size_t(len(buf)), access)
	if mr == nil {
		return nil, fmt.Errorf("ibv_reg_mr of %d bytes failed (memlock limit? `ulimit -l`)", len(buf))
	}
	r := rdma.NewRegistration(buf, uint32(mr.lkey), func() error {
		if rc := C.ibv_dereg_mr(mr); rc != 0 {
			return fmt.Errorf("ibv_dereg_mr: %v", syscall.Errno(rc))
		}
		return nil
	})
	return r, nil
}

// Register implements rdma.Transport (local destination memory).
func (t *Transport) Register(buf []byte) (*rdma.Registration, error) {
	inner, err := t.reg(buf, C.IBV_ACCESS_LOCAL_WRITE)
	if err != nil {
		return nil, err
	}
	var r *rdma.Registration
	r = rdma.NewRegistration(buf, inner.LKey, func() error {
		regs.remove(r)
		return inner.Release()
	})
	regs.add(r)
	return r, nil
}

// Expose registers node-side memory (a slab) for one-sided remote reads and
// returns its registration; RKey travels to clients in SegmentRef.
func (t *Transport) Expose(buf []byte) (*rdma.Registration, uint32, error) {
	mr := C.ibv_reg_mr(t.pd, unsafe.Pointer(unsafe.SliceData(buf)), C.size_t(len(buf)), C.IBV_ACCESS_LOCAL_WRITE|C.IBV_ACCESS_REMOTE_READ)
	if mr == nil {
		return nil, 0, fmt.Errorf("ibv_reg_mr (remote read) of %d bytes failed", len(buf))
	}
	r := rdma.NewRegistration(buf, uint32(mr.lkey), func() error { C.ibv_dereg_mr(mr); return nil })
	return r, uint32(mr.rkey), nil
}

// registry maps destination addresses to lkeys.
type registry struct {
	mu sync.RWMutex
	rs []*rdma.Registration
}

var regs registry

func (g *registry) add(r *rdma.Registration) { g.mu.Lock(); g.rs = append(g.rs, r); g.mu.Unlock() }

func (g *registry) remove(r *rdma.Registration) {
	g.mu.Lock()
	defer g.mu.Unlock()
	for i, x := range g.rs {
		if x == r {
			g.rs = append(g.rs[:i], g.rs[i+1:]...)
			return
		}
	}
}

func (g *registry) lkey(dst []byte) (uint32, bool) {
	a := uintptr(unsafe.Pointer(unsafe.SliceData(dst)))
	g.mu.RLock()
	defer g.mu.RUnlock()
	for _, r := range g.rs {
		s := uintptr(unsafe.Pointer(unsafe.SliceData(r.Buf)))
		if a >= s && a+uintptr(len(dst)) <= s+uintptr(len(r.Buf)) {
			return r.LKey, true
		}
	}
	return 0, false
}

// qp is one RC queue pair with its completion queue.
type qp struct {
	cq *C.struct_ibv_cq
	qp *C.struct_ibv_qp
}

func (t *Transport) newQP(depth int) (*qp, QPInfo, error) {
	cq := C.ibv_create_cq(t.ctx, C.int(depth), nil, nil, 0)
	if cq == nil {
		return nil, QPInfo{}, fmt.Errorf("ibv_create_cq failed")
	}
	q := C.aq_create_qp(t.pd, cq, C.int(depth))
	if q == nil {
		C.ibv_destroy_cq(cq)
		return nil, QPInfo{}, fmt.Errorf("ibv_create_qp failed")
	}
	p := &qp{cq: cq, qp: q}
	if rc := C.aq_qp_init(q, C.int(t.cfg.Port)); rc != 0 {
		p.destroy()
		return nil, QPInfo{}, fmt.Errorf("QP to INIT: %v", syscall.Errno(rc))
	}
	var psn [4]byte
	rand.Read(psn[:])
	return p, QPInfo{LID: t.lid, QPN: uint32(q.qp_num), PSN: binary.LittleEndian.Uint32(psn[:]) & 0xffffff, GID: t.gid}, nil
}

// connect moves the QP to RTR (towards remote) and RTS.
func (t *Transport) connect(p *qp, local, remote QPInfo) error {
	useGID := C.int(0)
	if t.link == C.IBV_LINK_LAYER_ETHERNET || remote.LID == 0 {
		useGID = 1
	}
	if rc := C.aq_qp_rtr(p.qp, C.int(t.cfg.Port), t.mtu, C.uint32_t(remote.QPN), C.uint32_t(remote.PSN), C.uint16_t(remote.LID),
		(*C.uint8_t)(unsafe.Pointer(&remote.GID[0])), useGID, C.int(t.cfg.GIDIndex)); rc != 0 {
		return fmt.Errorf("QP to RTR: %v", syscall.Errno(rc))
	}
	if rc := C.aq_qp_rts(p.qp, C.uint32_t(local.PSN)); rc != 0 {
		return fmt.Errorf("QP to RTS: %v", syscall.Errno(rc))
	}
	return nil
}

func (p *qp) destroy() {
	C.ibv_destroy_qp(p.qp)
	C.ibv_destroy_cq(p.cq)
}

// Dial creates an RC queue pair and connects it to the node's: admission
// and the QPInfo exchange run over Config.Control (or Config.Exchange).
func (t *Transport) Dial(ctx context.Context, node rdma.NodeID) (rdma.Conn, error) {
	var ctl rdma.Conn
	exchange := t.cfg.Exchange
	if t.cfg.Control != nil {
		var err error
		if ctl, err = t.cfg.Control.Dial(ctx, node); err != nil {
			return nil, err
		}
		if x, ok := ctl.(qpExchanger); ok && exchange == nil {
			exchange = func(ctx context.Context, _ rdma.NodeID, l QPInfo) (QPInfo, error) { return x.ExchangeQP(ctx, l) }
		}
	}
	fail := func(err error) (rdma.Conn, error) {
		if ctl != nil {
			ctl.Close()
		}
		return nil, err
	}
	if exchange == nil {
		return fail(fmt.Errorf("no Config.Control or Config.Exchange to connect queue pairs with %s", node))
	}
	p, local, err := t.newQP(t.cfg.QueueDepth)
	if err != nil {
		return fail(err)
	}
	remote, err := exchange(ctx, node, local)
	if err == nil {
		err = t.connect(p, local, remote)
	}
	if err != nil {
		p.destroy()
		return fail(fmt.Errorf("connecting queue pairs with memory node %s: %w", node, err))
	}
	c := &conn{t: t, node: node, cq: p.cq, qp: p.qp, ctl: ctl, batches: map[uint64][]uint64{}, stop: make(chan struct{}), done: make(chan struct{})}
	go c.pollLoop()
	return c, nil
}

// Endpoint is the memory node's side: it registers slabs for remote reads
// and connects one passive queue pair per client (memnode.RDMAEndpoint).
type Endpoint struct{ t *Transport }

// NewEndpoint opens the device for a memory node.
func NewEndpoint(cfg Config) (*Endpoint, error) {
	tr, err := New(cfg)
	if err != nil {
		return nil, err
	}
	return &Endpoint{t: tr.(*Transport)}, nil
}

// Expose registers a slab with REMOTE_READ and returns its remote key.
func (e *Endpoint) Expose(buf []byte) (uint32, error) {
	_, rkey, err := e.t.Expose(buf)
	return rkey, err
}

// Accept creates a queue pair connected to the client's. The node never
// posts on it (reads are one-sided), so its CQ is not polled.
func (e *Endpoint) Accept(remote QPInfo) (QPInfo, func() error, error) {
	p, local, err := e.t.newQP(16)
	if err != nil {
		return QPInfo{}, nil, err
	}
	if err := e.t.connect(p, local, remote); err != nil {
		p.destroy()
		return QPInfo{}, nil, err
	}
	return local, func() error { p.destroy(); return nil }, nil
}

// Close releases the device. Registered slabs must be unmapped after.
func (e *Endpoint) Close() error { return e.t.Close() }

type conn struct {
	t    *Transport
	node rdma.NodeID
	cq   *C.struct_ibv_cq
	qp   *C.struct_ibv_qp
	ctl  rdma.Conn

	pmu     sync.Mutex
	next    uint64
	batches map[uint64][]uint64 // signalled wr_id → cookies of the chain
	failed  error

	cq2 rdma.CompletionQueue // completions for Poll (cq is the verbs CQ)

	stop, done chan struct{}
	once       sync.Once
}

func (c *conn) Node() rdma.NodeID { return c.node }

// PostReads implements rdma.Conn: one chain, one doorbell, last signalled.
func (c *conn) PostReads(ops []rdma.ReadOp) error {
	n := len(ops)
	if n == 0 {
		return nil
	}
	laddr := make([]C.uint64_t, n)
	ln := make([]C.uint32_t, n)
	lkey := make([]C.uint32_t, n)
	raddr := make([]C.uint64_t, n)
	cookies := make([]uint64, n)
	rkey := ops[0].Seg.RKey
	for i, op := range ops {
		if op.Seg.ID != ops[0].Seg.ID {
			return rdma.ErrMixedSegments
		}
		if op.Seg.RKey == 0 && op.Seg.Addr == 0 {
			return fmt.Errorf("segment %#x has no RDMA registration on %s (node without a device?)", op.Seg.ID, c.node)
		}
		if op.Off+uint64(len(op.Dst)) > op.Seg.Len {
			return fmt.Errorf("read [%d,+%d) outside segment %#x of %d bytes", op.Off, len(op.Dst), op.Seg.ID, op.Seg.Len)
		}
		k, ok := regs.lkey(op.Dst)
		if !ok {
			return rdma.ErrNotRegistered
		}
		laddr[i] = C.uint64_t(uintptr(unsafe.Pointer(unsafe.SliceData(op.Dst))))
		ln[i], lkey[i] = C.uint32_t(len(op.Dst)), C.uint32_t(k)
		raddr[i] = C.uint64_t(op.Seg.Addr + op.Off)
		cookies[i] = op.Cookie
	}
	c.pmu.Lock()
	defer c.pmu.Unlock()
	if c.failed != nil {
		return c.failed
	}
	c.next++
	id := c.next
	c.batches[id] = cookies
	if rc := C.aq_post_reads(c.qp, C.int(n), &laddr[0], &ln[0], &lkey[0], &raddr[0], C.uint32_t(rkey), C.uint64_t(id)); rc != 0 {
		delete(c.batches, id)
		return fmt.Errorf("ibv_post_send: %v", syscall.Errno(rc))
	}
	return nil
}

// pollLoop busy-polls the CQ on a locked OS thread.
func (c *conn) pollLoop() {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	defer close(c.done)
	ids := make([]C.uint64_t, 32)
	st := make([]C.int, 32)
	idle := 0
	for {
		select {
		case <-c.stop:
			return
		default:
		}
		k := int(C.aq_poll(c.cq, 32, &ids[0], &st[0]))
		if k < 0 {
			c.fail(fmt.Errorf("ibv_poll_cq failed"))
			return
		}
		if k == 0 {
			if idle++; idle > 1<<14 {
				time.Sleep(20 * time.Microsecond) // nothing outstanding for a while
			}
			continue
		}
		idle = 0
		for i := 0; i < k; i++ {
			c.pmu.Lock()
			cookies := c.batches[uint64(ids[i])]
			delete(c.batches, uint64(ids[i]))
			c.pmu.Unlock()
			var err error
			if st[i] != C.IBV_WC_SUCCESS {
				err = fmt.Errorf("memory node %s: work completion %s", c.node, C.GoString(C.aq_wc_str(st[i])))
			}
			c.complete(cookies, err)
			if err != nil {
				c.fail(err) // the QP is in the error state now
			}
		}
	}
}

func (c *conn) complete(cookies []uint64, err error) { c.cq2.CompleteCookies(cookies, err) }

func (c *conn) fail(err error) {
	c.pmu.Lock()
	if c.failed != nil {
		c.pmu.Unlock()
		return
	}
	c.failed = err
	bs := c.batches
	c.batches = map[uint64][]uint64{}
	c.pmu.Unlock()
	for _, cookies := range bs {
		c.complete(cookies, err)
	}
	c.cq2.Fail(err)
}

// Poll implements rdma.Conn.
func (c *conn) Poll(ctx context.Context, out []rdma.Completion) (int, error) {
	return c.cq2.Poll(ctx, out)
}

// Write implements rdma.Conn over the control connection.
func (c *conn) Write(ctx context.Context, w *rdma.WriteSegment) (rdma.SegmentRef, error) {
	if c.ctl == nil {
		return rdma.SegmentRef{}, fmt.Errorf("no Config.Control transport for publishing")
	}
	return c.ctl.Write(ctx, w)
}

// Delete implements rdma.Conn over the control connection.
func (c *conn) Delete(ctx context.Context, id rdma.SegmentID) error {
	if c.ctl == nil {
		return fmt.Errorf("no Config.Control transport")
	}
	return c.ctl.Delete(ctx, id)
}

// ListFrom implements rdma.Inventory over the control connection.
func (c *conn) ListFrom(ctx context.Context, from rdma.SegmentID, max int) (rdma.ListPage, error) {
	inv, ok := c.ctl.(rdma.Inventory)
	if !ok {
		return rdma.ListPage{}, rdma.ErrNoInventory
	}
	return inv.ListFrom(ctx, from, max)
}

// Usage implements rdma.Inventory over the control connection.
func (c *conn) Usage(ctx context.Context) (rdma.NodeUsage, error) {
	inv, ok := c.ctl.(rdma.Inventory)
	if !ok {
		return rdma.NodeUsage{}, rdma.ErrNoInventory
	}
	return inv.Usage(ctx)
}

// Close destroys the queue pair: after ibv_destroy_qp the NIC no longer
// writes any destination of this connection.
func (c *conn) Close() error {
	c.once.Do(func() {
		c.fail(rdma.ErrClosed)
		close(c.stop)
		<-c.done
		C.ibv_destroy_qp(c.qp)
		C.ibv_destroy_cq(c.cq)
		if c.ctl != nil {
			c.ctl.Close()
		}
	})
	return nil
}
