package e2e

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/aquifer-pool/aquifer/pki"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
)

// The probe is what an unprivileged local user tries against a running
// daemon: every TCP port it listens on, as an etcd client (gRPC, plain and
// TLS without a certificate) and through etcd's JSON gateway, reading and
// writing keys; the daemon's files; its API socket. The test binary runs it
// as another uid when AQUIFER_E2E_PROBE is set (before TestMain).

const probeEnv = "AQUIFER_E2E_PROBE"

// probeSpec says what to try.
type probeSpec struct {
	Addrs []string `json:"addrs"`
	Files []string `json:"files"`
	API   string   `json:"api"`
}

// attempt is one thing tried, and whether it worked.
type attempt struct {
	Target string `json:"target"`
	How    string `json:"how"`
	OK     bool   `json:"ok"`
	Detail string `json:"detail"`
}

func init() {
	spec := os.Getenv(probeEnv)
	if spec == "" {
		return
	}
	var s probeSpec
	if err := json.Unmarshal([]byte(spec), &s); err != nil {
		fmt.Fprintln(os.Stderr, "probe:", err)
		os.Exit(2)
	}
	json.NewEncoder(os.Stdout).Encode(runProbe(s, nil))
	os.Exit(0)
}

// runProbe tries everything in s; with creds it also tries etcd with them
// (the positive control: the probe detects access when there is some).
func runProbe(s probeSpec, creds *tls.Config) []attempt {
	var (
		out []attempt
		mu  sync.Mutex
		wg  sync.WaitGroup
	)
	add := func(target, how string, err error, detail string) {
		a := attempt{Target: target, How: how, OK: err == nil, Detail: detail}
		if err != nil {
			a.Detail = err.Error()
		}
		mu.Lock()
		out = append(out, a)
		mu.Unlock()
	}
	anon := &tls.Config{InsecureSkipVerify: true}
	for _, addr := range s.Addrs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			probeAddr(addr, creds, anon, add)
		}()
	}
	wg.Wait()
	for _, f := range s.Files {
		_, err := os.ReadFile(f)
		add(f, "read the file", err, "")
	}
	if s.API != "" {
		hc := &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, "unix", s.API)
		}}}
		r, err := hc.Get("http://api/v1/snapshots")
		if err == nil {
			r.Body.Close()
			if r.StatusCode != 200 {
				err = fmt.Errorf("HTTP %d", r.StatusCode)
			}
		}
		add(s.API, "the daemon's API", err, "")
	}
	return out
}

func b64(s string) string { return base64.StdEncoding.EncodeToString([]byte(s)) }

// listeningPorts returns the loopback/any TCP addresses process pid
// listens on, from /proc/net/tcp{,6} and the process's socket fds.
func listeningPorts(t *testing.T, pid int) []string {
	t.Helper()
	inodes := map[string]bool{}
	fds, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, fd := range fds {
		l, err := os.Readlink(fmt.Sprintf("/proc/%d/fd/%s", pid, fd.Name()))
		if err == nil && strings.HasPrefix(l, "socket:[") {
			inodes[strings.TrimSuffix(strings.TrimPrefix(l, "socket:["), "]")] = true
		}
	}
	var out []string
	for _, tab := range []string{"/proc/net/tcp", "/proc/net/tcp6"} {
		b, err := os.ReadFile(tab)
		if err != nil {
			continue
		}
		for _, line := range strings.Split(string(b), "\n")[1:] {
			f := strings.Fields(line)
			if len(f) < 10 || f[3] != "0A" || !inodes[f[9]] {
				continue
			}
			hostHex, portHex, _ := strings.Cut(f[1], ":")
			port, _ := strconv.ParseUint(portHex, 16, 16)
			host := "127.0.0.1"
			if hostHex != "0100007F" {
				host = "localhost" // any other address: reach it by name
				if ip, err := hex.DecodeString(hostHex); err == nil && len(ip) == 4 {
					host = net.IPv4(ip[3], ip[2], ip[1], ip[0]).String()
					if host == "0.0.0.0" {
						host = "127.0.0.1"
					}
				}
			}
			out = append(out, net.JoinHostPort(host, strconv.Itoa(int(port))))
		}
	}
	if len(out) == 0 {
		t.Fatalf("process %d listens on no TCP port: the probe would prove nothing", pid)
	}
	return out
}

// etcdCreds is the cluster's client TLS configuration from a PKI directory.
func etcdCreds(t *testing.T, tlsDir string) *tls.Config {
	t.Helper()
	c, err := pki.ClientTLS(filepath.Join(tlsDir, pki.CACert), pki.Files(tlsDir, "client"))
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// etcdOf finds which of addrs is the etcd member (it answers the cluster's
// client certificate) and returns a client of it.
func etcdOf(t *testing.T, addrs []string, tlsDir string) (*clientv3.Client, string) {
	t.Helper()
	creds := etcdCreds(t, tlsDir)
	found := make(chan string, len(addrs))
	var wg sync.WaitGroup
	for _, a := range addrs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			defer cancel()
			cli, err := clientv3.New(clientv3.Config{Endpoints: []string{"https://" + a}, TLS: creds, DialTimeout: 2 * time.Second,
				Logger: zap.NewNop()})
			if err != nil {
				return
			}
			defer cli.Close()
			if _, err := cli.Get(ctx, "/aquifer/ping"); err == nil {
				found <- a
			}
		}()
	}
	wg.Wait()
	close(found)
	a, ok := <-found
	if !ok {
		t.Fatalf("no etcd member among %v answers the cluster's certificate", addrs)
	}
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{"https://" + a}, TLS: creds, DialTimeout: 5 * time.Second,
		Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cli.Close() })
	return cli, a
}

// probeAddr tries one TCP address as an etcd client and through etcd's
// JSON gateway.
func probeAddr(addr string, creds, anon *tls.Config, add func(target, how string, err error, detail string)) {
	kinds := []struct {
		how  string
		ep   string
		conf *tls.Config
	}{{"etcd gRPC, plain", "http://" + addr, nil}, {"etcd gRPC, TLS without a client certificate", "https://" + addr, anon}}
	if creds != nil {
		kinds = []struct {
			how  string
			ep   string
			conf *tls.Config
		}{{"etcd gRPC with the cluster's client certificate", "https://" + addr, creds}}
	}
	for _, k := range kinds {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		cli, err := clientv3.New(clientv3.Config{Endpoints: []string{k.ep}, TLS: k.conf, DialTimeout: 2 * time.Second,
			Context: ctx, Logger: zap.NewNop()})
		if err == nil {
			var r *clientv3.GetResponse
			if r, err = cli.Get(ctx, "/aquifer/", clientv3.WithPrefix(), clientv3.WithKeysOnly()); err == nil {
				add(addr, k.how+": read keys", nil, fmt.Sprintf("%d keys", len(r.Kvs)))
			} else {
				add(addr, k.how+": read keys", err, "")
			}
			_, err = cli.Put(ctx, "/aquifer/probe", "x")
			add(addr, k.how+": write a key", err, "")
			cli.Close()
		} else {
			add(addr, k.how, err, "")
		}
		cancel()
	}
	if creds != nil {
		return
	}
	// etcd's JSON gateway on the same port: plain HTTP and HTTPS.
	body := `{"key":"` + b64("/aquifer/") + `","range_end":"` + b64("/aquifer0") + `"}`
	for _, scheme := range []string{"http", "https"} {
		hc := &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{TLSClientConfig: anon}}
		r, err := hc.Post(scheme+"://"+addr+"/v3/kv/range", "application/json", strings.NewReader(body))
		if err == nil {
			var b bytes.Buffer
			b.ReadFrom(r.Body)
			r.Body.Close()
			if r.StatusCode != 200 || !strings.Contains(b.String(), `"header"`) {
				err = fmt.Errorf("HTTP %d: %.80q", r.StatusCode, b.String())
			} else {
				add(addr, "etcd JSON gateway over "+scheme, nil, b.String())
				continue
			}
		}
		add(addr, "etcd JSON gateway over "+scheme, err, "")
	}
}
