package pki

import (
	"crypto/tls"
	"errors"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// handshake runs a TLS server with srv on loopback and dials it with cli;
// it returns the server side's handshake error.
func handshake(t *testing.T, srv, cli *tls.Config) error {
	t.Helper()
	l, err := tls.Listen("tcp", "127.0.0.1:0", srv)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	done := make(chan error, 1)
	go func() {
		c, err := l.Accept()
		if err != nil {
			done <- err
			return
		}
		defer c.Close()
		err = c.(*tls.Conn).Handshake()
		if err == nil {
			_, err = c.Write([]byte("ok"))
		}
		done <- err
	}()
	c, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", l.Addr().String(), cli)
	if err == nil {
		// TLS 1.3 reports a refused client certificate on the first read.
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		_, err = io.ReadFull(c, make([]byte, 2))
		c.Close()
	}
	serr := <-done
	if (err == nil) != (serr == nil) {
		t.Fatalf("client %v, server %v: one side accepted what the other refused", err, serr)
	}
	return serr
}

// TestMutualTLS issues a CA, a server and a client certificate, and checks
// that the server admits that client, and refuses a client without a
// certificate or with one another CA issued.
func TestMutualTLS(t *testing.T) {
	dir := t.TempDir()
	ca, err := OpenCA(dir, "test CA")
	if err != nil {
		t.Fatal(err)
	}
	srv, err := ca.Ensure(dir, "member", Spec{CN: "member", Server: true, Client: true, IPs: []net.IP{net.IPv4(127, 0, 0, 1)}})
	if err != nil {
		t.Fatal(err)
	}
	cli, err := ca.Ensure(dir, "client", Spec{CN: "daemon", Client: true})
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{CACert, CAKey, "member.crt", "member.key", "client.crt", "client.key"} {
		st, err := os.Stat(filepath.Join(dir, f))
		if err != nil || st.Mode().Perm() != 0o600 {
			t.Fatalf("%s: %v %v, want mode 0600", f, st.Mode(), err)
		}
	}
	caFile := filepath.Join(dir, CACert)
	scfg, err := ServerTLS(caFile, srv)
	if err != nil {
		t.Fatal(err)
	}
	ccfg, err := ClientTLS(caFile, cli)
	if err != nil {
		t.Fatal(err)
	}
	if err := handshake(t, scfg, ccfg); err != nil {
		t.Fatalf("the cluster's client was refused: %v", err)
	}
	// No client certificate.
	anon := &tls.Config{RootCAs: ccfg.RootCAs}
	if err := handshake(t, scfg, anon); err == nil {
		t.Fatal("a client without a certificate was admitted")
	}
	// A certificate from another CA (same names, same shape).
	other := t.TempDir()
	oca, err := OpenCA(other, "test CA")
	if err != nil {
		t.Fatal(err)
	}
	ocli, err := oca.Ensure(other, "client", Spec{CN: "daemon", Client: true})
	if err != nil {
		t.Fatal(err)
	}
	forged, err := ClientTLS(caFile, ocli) // trusts the real CA, presents the other's certificate
	if err != nil {
		t.Fatal(err)
	}
	if err := handshake(t, scfg, forged); err == nil {
		t.Fatal("a client certificate of another CA was admitted")
	}
}

// TestEnsureKeepsAndReissues: a certificate that still serves is kept; one
// that lacks a name asked for, or another CA signed, is reissued.
func TestEnsureKeepsAndReissues(t *testing.T) {
	dir := t.TempDir()
	ca, err := OpenCA(dir, "c")
	if err != nil {
		t.Fatal(err)
	}
	spec := Spec{CN: "m", Server: true, IPs: []net.IP{net.IPv4(127, 0, 0, 1)}}
	p, err := ca.Ensure(dir, "m", spec)
	if err != nil {
		t.Fatal(err)
	}
	first, _ := os.ReadFile(p.CertFile)
	if _, err := ca.Ensure(dir, "m", spec); err != nil {
		t.Fatal(err)
	}
	if again, _ := os.ReadFile(p.CertFile); string(again) != string(first) {
		t.Fatal("a certificate that still serves was reissued")
	}
	// Reopening the CA loads it, it does not make a new one.
	ca2, err := OpenCA(dir, "c")
	if err != nil || !ca2.Cert.Equal(ca.Cert) {
		t.Fatalf("reopened CA differs: %v", err)
	}
	spec.DNS = []string{"etcd.example"}
	if _, err := ca.Ensure(dir, "m", spec); err != nil {
		t.Fatal(err)
	}
	if again, _ := os.ReadFile(p.CertFile); string(again) == string(first) {
		t.Fatal("a certificate lacking a name asked for was kept")
	}
	// Without the CA key nothing can be issued, and it says so.
	os.Remove(filepath.Join(dir, CAKey))
	ro, err := LoadCA(dir)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ro.Ensure(dir, "m", spec); err != nil {
		t.Fatalf("a valid certificate needs no CA key: %v", err)
	}
	if _, err := ro.Ensure(dir, "n", spec); err == nil || !strings.Contains(err.Error(), "no CA key") {
		t.Fatalf("issuing without the CA key: %v", err)
	}
}

// TestPermissionsRefused: a key other users can read, or a directory they
// can write, is refused with the chmod that fixes it.
func TestPermissionsRefused(t *testing.T) {
	dir := t.TempDir()
	ca, err := OpenCA(dir, "c")
	if err != nil {
		t.Fatal(err)
	}
	p, err := ca.Ensure(dir, "client", Spec{CN: "d", Client: true})
	if err != nil {
		t.Fatal(err)
	}
	caFile := filepath.Join(dir, CACert)
	os.Chmod(p.KeyFile, 0o640)
	_, err = ClientTLS(caFile, p)
	if err == nil || !strings.Contains(err.Error(), "chmod 600 "+p.KeyFile) {
		t.Fatalf("group-readable key: %v", err)
	}
	// Ensure refuses it too: an exposed key is never silently replaced.
	if _, err := ca.Ensure(dir, "client", Spec{CN: "d", Client: true}); !errors.Is(err, ErrExposed) {
		t.Fatalf("Ensure over a group-readable key: %v", err)
	}
	os.Chmod(p.KeyFile, 0o600)
	os.Chmod(dir, 0o777)
	defer os.Chmod(dir, 0o700)
	_, err = ClientTLS(caFile, p)
	if err == nil || !strings.Contains(err.Error(), "chmod go-w "+dir) {
		t.Fatalf("world-writable directory: %v", err)
	}
	if _, err := OpenCA(dir, "c"); err == nil {
		t.Fatal("a CA in a world-writable directory was opened")
	}
	os.Chmod(dir, 0o700)
	if _, err := ClientTLS(caFile, Pair{}); err == nil {
		t.Fatal("a client without a certificate was configured")
	}
	if _, err := ClientTLS(filepath.Join(dir, "missing"), p); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("missing CA file: %v", err)
	}
}

// TestLockedSetup: processes setting up one directory at once (here
// goroutines, each opening the CA and issuing its own certificate under
// the lock) end with one CA that signed every certificate.
func TestLockedSetup(t *testing.T) {
	dir := t.TempDir()
	const n = 8
	errs := make(chan error, n)
	for i := range n {
		go func() {
			errs <- Locked(dir, func() error {
				ca, err := OpenCA(dir, "c")
				if err != nil {
					return err
				}
				_, err = ca.Ensure(dir, "m"+string(rune('a'+i)), Spec{CN: "m", Client: true})
				return err
			})
		}()
	}
	for range n {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	ca, err := LoadCA(dir)
	if err != nil {
		t.Fatal(err)
	}
	for i := range n {
		if err := ca.check(Files(dir, "m"+string(rune('a'+i))), Spec{Client: true}); err != nil {
			t.Fatalf("certificate %d: %v", i, err)
		}
	}
}
