package client

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"time"

	"github.com/aquifer-pool/aquifer/api"
)

// EnvAPI names the environment variable holding the default API socket.
const EnvAPI = "AQUIFER_API"

// DefaultSocket is the API socket used when neither a flag nor AQUIFER_API
// names one.
const DefaultSocket = "/run/aquifer/api.sock"

// Socket returns the API socket to use: flag if set, else $AQUIFER_API,
// else DefaultSocket.
func Socket(flag string) string {
	if flag != "" {
		return flag
	}
	if s := os.Getenv(EnvAPI); s != "" {
		return s
	}
	return DefaultSocket
}

// Options tune a Client.
type Options struct {
	// Timeout bounds every call except Publish and WaitReady (default 30s).
	Timeout time.Duration
	// PublishTimeout bounds Publish, which copies the image into the tiers
	// (default 10 minutes).
	PublishTimeout time.Duration
}

// Client talks to one daemon.
type Client struct {
	socket string
	hc     *http.Client
	o      Options
}

// New returns a client of the daemon listening on socket.
func New(socket string, o Options) *Client {
	if o.Timeout <= 0 {
		o.Timeout = 30 * time.Second
	}
	if o.PublishTimeout <= 0 {
		o.PublishTimeout = 10 * time.Minute
	}
	tr := &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "unix", socket)
	}, MaxIdleConnsPerHost: 16}
	return &Client{socket: socket, hc: &http.Client{Transport: tr}, o: o}
}

// Socket is the API socket this client talks to.
func (c *Client) Socket() string { return c.socket }

func (c *Client) do(ctx context.Context, timeout time.Duration, method, path string, body, out any) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return err
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, "http://aquifer/"+api.Version+path, rd)
	if err != nil {
		return err
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		var op *net.OpError
		switch {
		case errors.Is(err, context.DeadlineExceeded):
			return &api.Error{Code: api.CodeTimeout, Message: fmt.Sprintf("daemon at %s did not answer %s %s within %v", c.socket, method, path, timeout)}
		case errors.As(err, &op) && op.Op == "dial":
			return &api.Error{Code: api.CodeUnavailable, Message: fmt.Sprintf("no daemon at %s (is `aquifer serve` running? set --api or %s): %v", c.socket, EnvAPI, op.Err)}
		}
		return &api.Error{Code: api.CodeUnavailable, Message: fmt.Sprintf("daemon at %s: %v", c.socket, err)}
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 16<<20))
	if err != nil {
		return &api.Error{Code: api.CodeUnavailable, Message: fmt.Sprintf("daemon at %s: reading the answer to %s %s: %v", c.socket, method, path, err)}
	}
	if resp.StatusCode >= 300 {
		e := &api.Error{Status: resp.StatusCode}
		if json.Unmarshal(b, e) != nil || e.Message == "" {
			e.Message = fmt.Sprintf("%s %s: %s", method, path, bytes.TrimSpace(b))
		}
		if e.Code == "" {
			e.Code = codeOf(resp.StatusCode)
		}
		return e
	}
	if out != nil && len(b) > 0 {
		if err := json.Unmarshal(b, out); err != nil {
			return fmt.Errorf("daemon at %s: bad answer to %s %s: %w", c.socket, method, path, err)
		}
	}
	return nil
}

func codeOf(status int) string {
	switch status {
	case 400:
		return api.CodeInvalid
	case 404:
		return api.CodeNotFound
	case 409:
		return api.CodeExists
	case 503:
		return api.CodeUnavailable
	case 504:
		return api.CodeTimeout
	}
	return api.CodeInternal
}

// Prepare asks the daemon to serve VM id and returns it with the UFFD
// socket to give Firecracker.
func (c *Client) Prepare(ctx context.Context, id string, req api.PrepareRequest) (*api.VM, error) {
	var vm api.VM
	if err := c.do(ctx, c.o.Timeout, "PUT", "/vms/"+url.PathEscape(id), req, &vm); err != nil {
		return nil, err
	}
	return &vm, nil
}

// WaitReady waits up to timeout until VM id's hot set is installed. While
// the daemon is unavailable — restarting, or handing its VMs over to a
// successor — it asks again until the timeout.
func (c *Client) WaitReady(ctx context.Context, id string, timeout time.Duration) (*api.VM, error) {
	deadline := time.Now().Add(timeout)
	for {
		left := max(time.Until(deadline), time.Millisecond)
		var vm api.VM
		q := url.Values{"timeout": {left.String()}}
		err := c.do(ctx, left+c.o.Timeout, "GET", "/vms/"+url.PathEscape(id)+"/ready?"+q.Encode(), nil, &vm)
		if err == nil {
			return &vm, nil
		}
		if !errors.Is(err, api.ErrUnavailable) || time.Until(deadline) <= 0 {
			return nil, err
		}
		select {
		case <-ctx.Done():
			return nil, err
		case <-time.After(min(50*time.Millisecond, time.Until(deadline))):
		}
	}
}

// Get returns VM id.
func (c *Client) Get(ctx context.Context, id string) (*api.VM, error) {
	var vm api.VM
	if err := c.do(ctx, c.o.Timeout, "GET", "/vms/"+url.PathEscape(id), nil, &vm); err != nil {
		return nil, err
	}
	return &vm, nil
}

// VMs lists every VM the daemon serves.
func (c *Client) VMs(ctx context.Context) ([]api.VM, error) {
	var l []api.VM
	err := c.do(ctx, c.o.Timeout, "GET", "/vms", nil, &l)
	return l, err
}

// Delete stops serving VM id.
func (c *Client) Delete(ctx context.Context, id string) error {
	return c.do(ctx, c.o.Timeout, "DELETE", "/vms/"+url.PathEscape(id), nil, nil)
}

// Publish asks the daemon to publish the image file at path (a path on the
// daemon's host) as name.
func (c *Client) Publish(ctx context.Context, path, name string) (*api.Snapshot, error) {
	var s api.Snapshot
	if err := c.do(ctx, c.o.PublishTimeout, "POST", "/snapshots", api.PublishRequest{Image: path, Name: name}, &s); err != nil {
		return nil, err
	}
	return &s, nil
}

// Snapshots lists the published snapshots.
func (c *Client) Snapshots(ctx context.Context) ([]api.Snapshot, error) {
	var l []api.Snapshot
	err := c.do(ctx, c.o.Timeout, "GET", "/snapshots", nil, &l)
	return l, err
}

// RemoveSnapshot removes snapshot name from the pool.
func (c *Client) RemoveSnapshot(ctx context.Context, name string) error {
	return c.do(ctx, c.o.Timeout, "DELETE", "/snapshots/"+url.PathEscape(name), nil, nil)
}

// Promote places snapshot name's hot set in the CXL region of the daemon's
// pod now (demoting colder ones as needed).
func (c *Client) Promote(ctx context.Context, name string) error {
	return c.do(ctx, c.o.PublishTimeout, "POST", "/snapshots/"+url.PathEscape(name)+"/promote", nil, nil)
}

// Demote drops snapshot name's hot set from the daemon's pod's CXL region
// (its restores there read the RDMA copy until it is hot again).
func (c *Client) Demote(ctx context.Context, name string) error {
	return c.do(ctx, c.o.Timeout, "POST", "/snapshots/"+url.PathEscape(name)+"/demote", nil, nil)
}

// Drain moves every segment off the memory node at addr and returns once
// none is left there.
func (c *Client) Drain(ctx context.Context, addr string) error {
	return c.do(ctx, c.o.PublishTimeout, "POST", "/memnodes/"+url.PathEscape(addr)+"/drain", nil, nil)
}

// Metrics returns the daemon's Prometheus exposition text.
func (c *Client) Metrics(ctx context.Context) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, c.o.Timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, "GET", "http://aquifer/metrics", nil)
	if err != nil {
		return "", err
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return "", &api.Error{Code: api.CodeUnavailable, Message: fmt.Sprintf("daemon at %s: %v", c.socket, err)}
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 16<<20))
	return string(b), err
}
