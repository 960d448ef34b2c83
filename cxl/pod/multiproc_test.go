package pod_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/aquifer-pool/aquifer/cxl/pod"
	"github.com/aquifer-pool/aquifer/cxl/pod/podtest"
	"github.com/aquifer-pool/aquifer/cxl/shm"
)

const (
	helperEnv      = "AQUIFER_POD_HELPER"
	mpHosts        = 4
	mpReadsPerHost = 25000
	mpKeysPerHost  = 4
	mpChunkSize    = 256 << 10
)

type hostReport struct {
	Host, Reads, Bad, Fallbacks, Retries, Published, Freed, NotFound int
	Err                                                              string
}

// TestMultiProcessPod: four host processes map one /dev/shm region
// (MAP_SHARED, PROT_READ outside their windows), share a control plane over
// a Unix socket, and publish and read each other's extents concurrently:
// at least 10^5 validated reads in total, none stale or torn.
func TestMultiProcessPod(t *testing.T) {
	total, bad := runMultiProcess(t, mpReadsPerHost)
	if bad != 0 {
		t.Fatalf("%d stale or torn reads", bad)
	}
	if total < 100000 {
		t.Fatalf("only %d reads", total)
	}
}

func runMultiProcess(t *testing.T, readsPerHost int) (total, bad int) {
	path, g := formatTempPod(t, "aquifer-pod-test", 16<<20, pod.FormatOptions{ChunkSize: mpChunkSize, HostSlots: mpHosts})
	if g.Chunks < 2*mpHosts {
		t.Fatalf("geometry has %d chunks", g.Chunks)
	}
	sock := filepath.Join(t.TempDir(), "ctl.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	go podtest.ServeCoordinator(l, podtest.NewMemCoordinator())

	var wg sync.WaitGroup
	reports := make([]hostReport, mpHosts)
	errs := make([]error, mpHosts)
	for h := 0; h < mpHosts; h++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			cmd := exec.Command(os.Args[0], "-test.run=^TestHelperHost$", "-test.v")
			cmd.Env = append(os.Environ(), fmt.Sprintf("%s=%d,%d,%s,%s", helperEnv, h, readsPerHost, path, sock))
			var out, stderr bytes.Buffer
			cmd.Stdout, cmd.Stderr = &out, &stderr
			if err := cmd.Run(); err != nil {
				errs[h] = fmt.Errorf("host %d: %v\n%s%s", h, err, out.String(), stderr.String())
				return
			}
			for _, line := range strings.Split(out.String(), "\n") {
				if rest, ok := strings.CutPrefix(line, "REPORT "); ok {
					errs[h] = json.Unmarshal([]byte(rest), &reports[h])
					return
				}
			}
			errs[h] = fmt.Errorf("host %d printed no report:\n%s", h, out.String())
		}()
	}
	wg.Wait()
	for h := 0; h < mpHosts; h++ {
		if errs[h] != nil {
			t.Fatal(errs[h])
		}
		rep := reports[h]
		if rep.Err != "" {
			t.Fatalf("host %d: %s", h, rep.Err)
		}
		t.Logf("host %d: %d reads, %d stale/torn, %d retries, %d fallbacks, %d published, %d freed",
			h, rep.Reads, rep.Bad, rep.Retries, rep.Fallbacks, rep.Published, rep.Freed)
		total += rep.Reads
		bad += rep.Bad
	}
	t.Logf("total: %d validated reads by %d processes, %d stale or torn", total, mpHosts, bad)
	return total, bad
}

// TestHelperHost is one host process of TestMultiProcessPod; it does nothing
// unless started by it.
func TestHelperHost(t *testing.T) {
	spec := os.Getenv(helperEnv)
	if spec == "" {
		t.Skip("helper process for TestMultiProcessPod")
	}
	parts := strings.SplitN(spec, ",", 4)
	if len(parts) != 4 {
		t.Fatalf("bad %s=%q", helperEnv, spec)
	}
	host, _ := strconv.Atoi(parts[0])
	reads, _ := strconv.Atoi(parts[1])
	rep := runHost(host, reads, parts[2], parts[3])
	b, _ := json.Marshal(rep)
	fmt.Printf("REPORT %s\n", b)
}

func runHost(host, reads int, path, sock string) (rep hostReport) {
	rep.Host = host
	fail := func(err error) hostReport { rep.Err = err.Error(); return rep }
	ctx := context.Background()
	coord, err := podtest.DialCoordinator("unix", sock)
	if err != nil {
		return fail(err)
	}
	defer coord.Close()
	// Read the geometry through a read-only mapping, then map with this
	// host's windows: its slot plus the owner areas.
	ro, err := shm.Open(path, nil, nil)
	if err != nil {
		return fail(err)
	}
	g, err := pod.ReadGeometry(ro)
	ro.Close()
	if err != nil {
		return fail(err)
	}
	r, err := shm.Open(path, g.Windows(host, true), nil)
	if err != nil {
		return fail(err)
	}
	defer r.Close()
	p, err := pod.Open(ctx, r, host, coord, pod.Options{Owner: true})
	if err != nil {
		return fail(err)
	}
	defer p.Close(ctx)
	for _, c := range []int{2 * host, 2*host + 1} {
		if err := p.Acquire(ctx, c); err != nil {
			return fail(err)
		}
	}
	rng := rand.New(rand.NewPCG(uint64(host), 42))
	version := make([]uint64, mpKeysPerHost)
	lastSeen := map[uint64]uint64{}
	publish := func() error {
		j := rng.IntN(mpKeysPerHost)
		version[j]++
		key := uint64(host*16 + j + 1)
		n := 1024 + rng.IntN(15*1024)
		_, err := p.Publish(ctx, strconv.FormatUint(key, 10), payload(key, version[j], n))
		if errors.Is(err, pod.ErrNoSpace) {
			version[j]--
			return nil
		}
		if err != nil {
			return err
		}
		_, err = p.Reclaim(ctx)
		return err
	}
	for j := 0; j < mpKeysPerHost; j++ {
		if err := publish(); err != nil {
			return fail(err)
		}
	}
	buf := make([]byte, 64<<10)
	for rep.Reads < reads {
		if rng.IntN(8) == 0 {
			if err := publish(); err != nil {
				return fail(err)
			}
		}
		other := rng.IntN(mpHosts)
		key := uint64(other*16 + rng.IntN(mpKeysPerHost) + 1)
		n, _, err := p.Get(ctx, strconv.FormatUint(key, 10), buf)
		switch {
		case errors.Is(err, pod.ErrNotFound):
			rep.NotFound++
			continue
		case errors.Is(err, pod.ErrFallback):
			rep.Fallbacks++
			continue
		case err != nil:
			return fail(err)
		}
		rep.Reads++
		k, ver, ok := check(buf[:n])
		// Torn: not self-consistent or wrong key. Stale: older than a
		// version this host already read (the catalog is linearizable
		// and versions only grow).
		if !ok || k != key || ver < lastSeen[key] {
			rep.Bad++
		}
		lastSeen[key] = max(lastSeen[key], ver)
	}
	st := p.Stats()
	rep.Retries, rep.Published, rep.Freed = st.Retries, st.Published, st.Freed
	return rep
}
