package pagerd

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"time"

	"github.com/aquifer-pool/aquifer/control"
)

// Client talks to a daemon's control API over its Unix socket.
type Client struct {
	hc *http.Client
}

// NewClient connects to the API socket.
func NewClient(apiSocket string) *Client {
	tr := &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "unix", apiSocket)
	}}
	return &Client{hc: &http.Client{Transport: tr}}
}

func (c *Client) do(ctx context.Context, method, path string, body any, out any) error {
	var rd io.Reader
	if body != nil {
		b, _ := json.Marshal(body)
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, "http://aquifer"+path, rd)
	if err != nil {
		return err
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return fmt.Errorf("pagerd: %s %s: %w", method, path, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if resp.StatusCode >= 300 {
		var e struct {
			Error string `json:"error"`
		}
		json.Unmarshal(b, &e)
		return fmt.Errorf("pagerd: %s %s: %s: %s", method, path, resp.Status, e.Error)
	}
	if out != nil && len(b) > 0 {
		return json.Unmarshal(b, out)
	}
	return nil
}

// Prepare asks the daemon to serve VM id from snapshot and returns the
// UFFD socket path for Firecracker.
func (c *Client) Prepare(ctx context.Context, id, snapshot string) (*VM, error) {
	return c.PrepareWith(ctx, id, snapshot, PrepareOptions{})
}

// PrepareWith is Prepare with per-VM options.
func (c *Client) PrepareWith(ctx context.Context, id, snapshot string, po PrepareOptions) (*VM, error) {
	var vm VM
	body := map[string]any{"snapshot": snapshot}
	if po.EarlyResume {
		body["early_resume"] = true
	}
	err := c.do(ctx, "PUT", "/v1/vms/"+url.PathEscape(id), body, &vm)
	return &vm, err
}

// WaitReady blocks until VM id's hot set is installed.
func (c *Client) WaitReady(ctx context.Context, id string, timeout time.Duration) (*VM, error) {
	var vm VM
	err := c.do(ctx, "GET", fmt.Sprintf("/v1/vms/%s/ready?timeout=%s", url.PathEscape(id), timeout), nil, &vm)
	return &vm, err
}

// Get returns the VM's state.
func (c *Client) Get(ctx context.Context, id string) (*VM, error) {
	var vm VM
	err := c.do(ctx, "GET", "/v1/vms/"+url.PathEscape(id), nil, &vm)
	return &vm, err
}

// Delete stops serving VM id.
func (c *Client) Delete(ctx context.Context, id string) error {
	return c.do(ctx, "DELETE", "/v1/vms/"+url.PathEscape(id), nil, nil)
}

// Metrics returns the Prometheus exposition text.
func (c *Client) Metrics(ctx context.Context) (string, error) {
	req, _ := http.NewRequestWithContext(ctx, "GET", "http://aquifer/metrics", nil)
	resp, err := c.hc.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return string(b), err
}

// Publish asks the daemon's pool to publish the image at path (on the
// daemon's host) as name.
func (c *Client) Publish(ctx context.Context, image, name string) (*control.Snapshot, error) {
	var s control.Snapshot
	err := c.do(ctx, "POST", "/v1/snapshots", map[string]string{"image": image, "name": name}, &s)
	return &s, err
}

// Snapshots lists the pool's catalog.
func (c *Client) Snapshots(ctx context.Context) ([]*control.Snapshot, error) {
	var l []*control.Snapshot
	err := c.do(ctx, "GET", "/v1/snapshots", nil, &l)
	return l, err
}

// RemoveSnapshot deletes a snapshot from the pool.
func (c *Client) RemoveSnapshot(ctx context.Context, name string) error {
	return c.do(ctx, "DELETE", "/v1/snapshots/"+url.PathEscape(name), nil, nil)
}
