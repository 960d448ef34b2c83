package control

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"sort"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// PodMember is one host's membership of a pod: its name, one lease, and
// the host slots (reader identities) allocated from the pod's slot table
// under that lease. When the lease is lost — the host crashed, or was cut
// off or stopped for longer than the TTL — every slot and every chunk the
// host owned disappears with it; the host is fenced and must join again as
// a new member.
type PodMember struct {
	Name  string
	Slots []PodLease
	c     *PodState
	lease clientv3.LeaseID
	ttl   time.Duration
	// lastOK is when etcd last confirmed the lease (unix ns).
	lastOK atomic.Int64
	lost   chan struct{}
	cancel context.CancelFunc
}

// MemberInfo is a pod member as recorded in the control plane.
type MemberInfo struct {
	Name     string `json:"name"`
	Addr     string `json:"addr,omitempty"`
	API      string `json:"api,omitempty"`
	Hostname string `json:"hostname"`
	PID      int    `json:"pid"`
	Slots    []int  `json:"slots"`
	Lease    int64  `json:"lease"`
	Joined   int64  `json:"joined_unix_ns"`
}

// MemberSpec says who joins and how many slots it wants.
type MemberSpec struct {
	Name, Addr, API string
	// Slots wanted (the first is the host's owner identity, the rest its
	// readers); at least MinSlots must be free or Join fails.
	Slots, MinSlots int
	// HostSlots is the size of the region's slot table.
	HostSlots int
	// Wait bounds how long to wait for a previous incarnation of this
	// member (same name) to lose its lease (default 30s).
	Wait time.Duration
}

// ErrMemberLive: a live member already uses the name.
var ErrMemberLive = errors.New("a live member already uses this host name")

func (c *PodState) memberKey(name string) string { return c.pre + "members/" + name }

// JoinMember makes spec a member of the pod: one lease, a member record
// and spec.Slots host slots taken from the slot table under that lease. A
// previous incarnation with the same name is waited out (or, if it was a
// process of this machine that is gone, its lease is revoked at once).
func (c *PodState) JoinMember(ctx context.Context, spec MemberSpec) (*PodMember, error) {
	if err := ValidName(spec.Name); err != nil {
		return nil, err
	}
	if spec.Slots < 1 || spec.HostSlots < 1 {
		return nil, fmt.Errorf("joining the pod as %s: %d of %d host slots asked for; give at least one of each", spec.Name, spec.Slots, spec.HostSlots)
	}
	if spec.MinSlots <= 0 {
		spec.MinSlots = 1
	}
	if spec.Wait <= 0 {
		spec.Wait = 30 * time.Second
	}
	host, _ := os.Hostname()
	info := MemberInfo{Name: spec.Name, Addr: spec.Addr, API: spec.API, Hostname: host, PID: os.Getpid(), Joined: time.Now().UnixNano()}
	m := &PodMember{Name: spec.Name, c: c, ttl: time.Duration(c.ttl) * time.Second, lost: make(chan struct{})}
	deadline := time.Now().Add(spec.Wait)
	for {
		retry, err := c.putMember(ctx, m, &info)
		if err == nil {
			break
		}
		if !retry || time.Now().After(deadline) || ctx.Err() != nil {
			return nil, err
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(250 * time.Millisecond):
		}
	}
	if err := c.allocSlots(ctx, m, spec); err != nil {
		c.p.revokeLater(m.lease)
		return nil, err
	}
	info.Slots = info.Slots[:0]
	for _, s := range m.Slots {
		info.Slots = append(info.Slots, s.Host)
	}
	info.Lease = int64(m.lease)
	b, _ := json.Marshal(info)
	octx, cancel := c.p.op(ctx)
	_, err := c.p.Client.Put(octx, c.memberKey(spec.Name), string(b), clientv3.WithLease(m.lease))
	cancel()
	if err != nil {
		c.p.revokeLater(m.lease)
		return nil, c.p.fail("record member "+spec.Name, err)
	}
	if err := m.keepAlive(); err != nil {
		c.p.revokeLater(m.lease)
		return nil, err
	}
	return m, nil
}

// putMember grants the member's lease and creates its record, or reports
// ErrMemberLive: retry says whether waiting can help (a predecessor on
// another machine, whose lease will expire, or a dead one on this machine,
// whose lease it has just revoked) or not (a live process of this machine
// uses the name).
func (c *PodState) putMember(ctx context.Context, m *PodMember, info *MemberInfo) (retry bool, err error) {
	octx, cancel := c.p.op(ctx)
	defer cancel()
	l, err := c.p.Client.Grant(octx, c.ttl)
	if err != nil {
		return false, c.p.fail("pod member lease", err)
	}
	b, _ := json.Marshal(info)
	k := c.memberKey(info.Name)
	r, err := c.p.Client.Txn(octx).If(clientv3.Compare(clientv3.CreateRevision(k), "=", 0)).
		Then(clientv3.OpPut(k, string(b), clientv3.WithLease(l.ID))).Else(clientv3.OpGet(k)).Commit()
	if err != nil {
		c.p.revokeLater(l.ID)
		return false, c.p.fail("join as "+info.Name, err)
	}
	if r.Succeeded {
		m.lease = l.ID
		return false, nil
	}
	c.p.revokeLater(l.ID)
	var prev MemberInfo
	retry = true
	if g := r.Responses[0].GetResponseRange(); g != nil && len(g.Kvs) == 1 {
		json.Unmarshal(g.Kvs[0].Value, &prev)
		if prev.Hostname == info.Hostname && prev.PID > 0 && prev.Lease != 0 {
			if processAlive(prev.PID) {
				retry = false
			} else {
				// A crashed predecessor on this machine: nobody keeps
				// its lease alive, so fence it now instead of waiting.
				c.p.Client.Revoke(octx, clientv3.LeaseID(prev.Lease))
			}
		}
	}
	err = fmt.Errorf("pod member %q is pid %d on %s: %w (give each daemon its own host name)", info.Name, prev.PID, prev.Hostname, ErrMemberLive)
	return retry, err
}

func processAlive(pid int) bool {
	err := syscall.Kill(pid, 0)
	return err == nil || errors.Is(err, syscall.EPERM)
}

// allocSlots takes spec.Slots free slots of the table, round-robin from a
// cursor kept in etcd so that a freed slot is reused as late as possible.
func (c *PodState) allocSlots(ctx context.Context, m *PodMember, spec MemberSpec) error {
	octx, cancel := c.p.op(ctx)
	defer cancel()
	r, err := c.p.Client.Get(octx, c.pre+"hosts/", clientv3.WithPrefix())
	if err != nil {
		return c.p.fail("read the slot table", err)
	}
	held := map[int]bool{}
	for _, kv := range r.Kvs {
		if h, err := strconv.Atoi(strings.TrimPrefix(string(kv.Key), c.pre+"hosts/")); err == nil {
			held[h] = true
		}
	}
	cur, err := c.p.Client.Get(octx, c.pre+"slot-cursor")
	if err != nil {
		return c.p.fail("read the slot cursor", err)
	}
	start := 0
	if len(cur.Kvs) == 1 {
		start, _ = strconv.Atoi(string(cur.Kvs[0].Value))
	}
	next := start
	for i := 0; i < spec.HostSlots && len(m.Slots) < spec.Slots; i++ {
		slot := (start + i) % spec.HostSlots
		if held[slot] {
			continue
		}
		k := c.hostKey(slot)
		tr, err := c.p.Client.Txn(octx).If(clientv3.Compare(clientv3.CreateRevision(k), "=", 0)).
			Then(clientv3.OpPut(k, spec.Name, clientv3.WithLease(m.lease))).Commit()
		if err != nil {
			return c.p.fail("take a host slot", err)
		}
		if !tr.Succeeded {
			continue // taken meanwhile by another joiner
		}
		pl := PodLease{Host: slot, ID: uint64(tr.Header.Revision)}
		m.Slots = append(m.Slots, pl)
		c.mu.Lock()
		c.lids[pl.ID] = m.lease
		c.mu.Unlock()
		next = slot + 1
	}
	c.p.Client.Put(octx, c.pre+"slot-cursor", strconv.Itoa(next%spec.HostSlots))
	if len(m.Slots) < spec.MinSlots {
		return fmt.Errorf("pod slot table full: %d of %d slots held by live hosts, %s needs %d (format the region with more host slots)",
			len(held), spec.HostSlots, spec.Name, spec.MinSlots)
	}
	return nil
}

// keepAlive keeps the member's lease alive and records when etcd last
// confirmed it; Lost is closed when the lease is gone.
func (m *PodMember) keepAlive() error {
	kctx, cancel := context.WithCancel(context.Background())
	ch, err := m.c.p.Client.KeepAlive(kctx, m.lease)
	if err != nil {
		cancel()
		return m.c.p.fail("keep the pod lease alive", err)
	}
	m.cancel = cancel
	m.lastOK.Store(time.Now().UnixNano())
	go func() {
		defer close(m.lost)
		for resp := range ch {
			if resp == nil || resp.TTL <= 0 {
				return
			}
			m.lastOK.Store(time.Now().UnixNano())
		}
	}()
	return nil
}

// Valid reports whether the lease is certainly still held: etcd confirmed
// it less than a TTL (minus a safety margin) ago by this process's clock. A
// process that was stopped or cut off longer sees false before it touches
// the region again, and must treat itself as fenced.
func (m *PodMember) Valid() bool {
	margin := m.ttl / 5
	return time.Since(time.Unix(0, m.lastOK.Load())) < m.ttl-margin
}

// Lost is closed when the member's lease is gone (expired or revoked).
func (m *PodMember) Lost() <-chan struct{} { return m.lost }

// Lease returns the pod lease of slot, which must be one of m's.
func (m *PodMember) Lease(slot int) (PodLease, bool) {
	for _, s := range m.Slots {
		if s.Host == slot {
			return s, true
		}
	}
	return PodLease{}, false
}

// Leave revokes the lease: the member record, its slots and its chunks go.
func (m *PodMember) Leave(ctx context.Context) error {
	if m.cancel != nil {
		m.cancel()
	}
	m.c.mu.Lock()
	for _, s := range m.Slots {
		delete(m.c.lids, s.ID)
	}
	m.c.mu.Unlock()
	ctx, cancel := m.c.p.op(ctx)
	defer cancel()
	_, err := m.c.p.Client.Revoke(ctx, m.lease)
	return m.c.p.fail("leave the pod", err)
}

// Members lists the pod's live members by name.
func (c *PodState) Members(ctx context.Context) ([]MemberInfo, error) {
	ctx, cancel := c.p.op(ctx)
	defer cancel()
	r, err := c.p.Client.Get(ctx, c.pre+"members/", clientv3.WithPrefix())
	if err != nil {
		return nil, c.p.fail("list pod members", err)
	}
	var out []MemberInfo
	for _, kv := range r.Kvs {
		var m MemberInfo
		if json.Unmarshal(kv.Value, &m) == nil {
			out = append(out, m)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, nil
}

// ChunkOwners maps each owned chunk to the slot of the host that owns it.
func (c *PodState) ChunkOwners(ctx context.Context) (map[int]int, error) {
	ctx, cancel := c.p.op(ctx)
	defer cancel()
	r, err := c.p.Client.Get(ctx, c.pre+"chunks/", clientv3.WithPrefix())
	if err != nil {
		return nil, c.p.fail("list chunk owners", err)
	}
	out := map[int]int{}
	for _, kv := range r.Kvs {
		chunk, err := strconv.Atoi(strings.TrimPrefix(string(kv.Key), c.pre+"chunks/"))
		if err != nil {
			continue
		}
		host, _, _ := strings.Cut(string(kv.Value), "/")
		h, err := strconv.Atoi(host)
		if err == nil {
			out[chunk] = h
		}
	}
	return out, nil
}

// Catalog returns the pod catalog: every published extent by key.
func (c *PodState) Catalog(ctx context.Context) (map[string]ExtentRef, error) {
	ctx, cancel := c.p.op(ctx)
	defer cancel()
	r, err := c.p.Client.Get(ctx, c.pre+"catalog/", clientv3.WithPrefix())
	if err != nil {
		return nil, c.p.fail("read the pod catalog", err)
	}
	out := map[string]ExtentRef{}
	for _, kv := range r.Kvs {
		var ref ExtentRef
		if json.Unmarshal(kv.Value, &ref) == nil {
			out[strings.TrimPrefix(string(kv.Key), c.pre+"catalog/")] = ref
		}
	}
	return out, nil
}

// RequestEviction asks the owner of the chunk holding key's extent to
// evict it (a host can retire only extents of chunks it owns). The request
// lives while the requester's lease does.
func (c *PodState) RequestEviction(ctx context.Context, m *PodMember, key string) error {
	ctx, cancel := c.p.op(ctx)
	defer cancel()
	_, err := c.p.Client.Put(ctx, c.pre+"evict/"+key, m.Name, clientv3.WithLease(m.lease))
	return c.p.fail("request eviction of "+key, err)
}

// EvictionRequests lists the keys other hosts asked to evict.
func (c *PodState) EvictionRequests(ctx context.Context) ([]string, error) {
	ctx, cancel := c.p.op(ctx)
	defer cancel()
	r, err := c.p.Client.Get(ctx, c.pre+"evict/", clientv3.WithPrefix(), clientv3.WithKeysOnly())
	if err != nil {
		return nil, c.p.fail("read eviction requests", err)
	}
	var out []string
	for _, kv := range r.Kvs {
		out = append(out, strings.TrimPrefix(string(kv.Key), c.pre+"evict/"))
	}
	return out, nil
}

// EvictionDone withdraws the request for key.
func (c *PodState) EvictionDone(ctx context.Context, key string) error {
	ctx, cancel := c.p.op(ctx)
	defer cancel()
	_, err := c.p.Client.Delete(ctx, c.pre+"evict/"+key)
	return c.p.fail("withdraw eviction of "+key, err)
}

// LeaveSlot gives one slot of a member up (its key, if it still carries
// the slot's lease identity).
func (c *PodState) LeaveSlot(ctx context.Context, l PodLease) error {
	ctx, cancel := c.p.op(ctx)
	defer cancel()
	_, err := c.p.Client.Txn(ctx).If(c.alive(l)).Then(clientv3.OpDelete(c.hostKey(l.Host))).Commit()
	c.mu.Lock()
	delete(c.lids, l.ID)
	c.mu.Unlock()
	return c.p.fail(fmt.Sprintf("leave host slot %d", l.Host), err)
}

// ClusterID returns the etcd cluster's id (it names the control plane in
// a region's identity).
func (p *Plane) ClusterID(ctx context.Context) (uint64, error) {
	ctx, cancel := p.op(ctx)
	defer cancel()
	r, err := p.Client.Get(ctx, "/aquifer/ping")
	if err != nil {
		return 0, p.fail("read the cluster id", err)
	}
	return r.Header.ClusterId, nil
}
