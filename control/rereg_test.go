package control

import (
	"context"
	"io"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/aquifer-pool/aquifer/control/member"
)

// proxy forwards TCP connections to target until cut, after which it
// closes every connection and refuses new ones until healed: a network
// partition between a client and etcd, with etcd itself still running.
type proxy struct {
	l      net.Listener
	target string
	mu     sync.Mutex
	cut    bool
	conns  map[net.Conn]struct{}
}

func newProxy(t *testing.T, target string) *proxy {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &proxy{l: l, target: target, conns: map[net.Conn]struct{}{}}
	t.Cleanup(func() { l.Close(); p.partition(true) })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			p.mu.Lock()
			if p.cut {
				p.mu.Unlock()
				c.Close()
				continue
			}
			u, err := net.Dial("tcp", target)
			if err != nil {
				p.mu.Unlock()
				c.Close()
				continue
			}
			p.conns[c], p.conns[u] = struct{}{}, struct{}{}
			p.mu.Unlock()
			go func() { io.Copy(u, c); u.Close() }()
			go func() { io.Copy(c, u); c.Close() }()
		}
	}()
	return p
}

func (p *proxy) partition(cut bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.cut = cut
	if cut {
		for c := range p.conns {
			c.Close()
		}
		clear(p.conns)
	}
}

// TestReregisterAfterOutage cuts a client off from etcd for longer than
// its registrations' lease, so etcd expires them: once the client reaches
// etcd again, the host and memory-node registrations come back by
// themselves under new leases, each re-creation reported once, and stay.
func TestReregisterAfterOutage(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	dir := t.TempDir()
	files, creds := testPKI(t, dir)
	m, err := member.Start(ctx, member.Config{Dir: dir, TLS: files})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Stop()
	direct, err := Connect(ctx, m.Endpoints, creds)
	if err != nil {
		t.Fatal(err)
	}
	defer direct.Close()
	px := newProxy(t, m.Endpoints[0][len("https://"):])
	p, err := Connect(ctx, []string{"https://" + px.l.Addr().String()}, creds)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	var mu sync.Mutex
	again := map[string]int{}
	p.Reregistered = func(kind, id string) {
		mu.Lock()
		again[kind+"/"+id]++
		mu.Unlock()
	}
	const ttl = 1
	host, err := p.RegisterHost(ctx, Member{ID: "h1"}, ttl)
	if err != nil {
		t.Fatal(err)
	}
	defer host.Close(ctx)
	node, err := p.RegisterMemNode(ctx, Member{ID: "n1", Addr: "127.0.0.1:1", Capacity: 100}, ttl)
	if err != nil {
		t.Fatal(err)
	}
	defer node.Close(ctx)
	hostLease, nodeLease := host.Lease(), node.Lease()

	px.partition(true)
	// etcd, still running, expires both leases: the keys are gone.
	deadline := time.Now().Add(10 * time.Second)
	for {
		hs, _ := direct.Hosts(ctx)
		ns, _ := direct.MemNodes(ctx)
		if len(hs) == 0 && len(ns) == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("etcd kept the registrations of a partitioned client: %v %v", hs, ns)
		}
		time.Sleep(50 * time.Millisecond)
	}
	time.Sleep(ttl * time.Second) // and the client has given its leases up
	px.partition(false)
	deadline = time.Now().Add(20 * time.Second)
	for {
		hs, herr := direct.Hosts(ctx)
		ns, nerr := direct.MemNodes(ctx)
		mu.Lock()
		n := len(again)
		mu.Unlock()
		if herr == nil && nerr == nil && len(hs) == 1 && len(ns) == 1 && n == 2 &&
			hs[0].Epoch == int64(host.Lease()) && ns[0].Epoch == int64(node.Lease()) {
			if host.Lease() == hostLease || node.Lease() == nodeLease {
				t.Fatalf("re-registered under the old leases %x %x", hostLease, nodeLease)
			}
			if ns[0].Addr != "127.0.0.1:1" || ns[0].Capacity != 100 {
				t.Fatalf("memory node re-registered as %+v", ns[0])
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("registrations did not come back: hosts %v (%v), memnodes %v (%v), re-registered %v", hs, herr, ns, nerr, again)
		}
		time.Sleep(50 * time.Millisecond)
	}
	// They stay: the new leases are kept alive past several TTLs.
	time.Sleep(2 * ttl * time.Second)
	if hs, err := direct.Hosts(ctx); err != nil || len(hs) != 1 {
		t.Fatalf("host registration did not stay: %v %v", hs, err)
	}
	mu.Lock()
	defer mu.Unlock()
	if again["host/h1"] != 1 || again["memnode/n1"] != 1 {
		t.Fatalf("re-registrations reported %v, want one each", again)
	}
}
