package embed

import (
	"context"
	"net"
	"os"
	"path/filepath"
	"strings"

	"github.com/aquifer-pool/aquifer/control"
	"github.com/aquifer-pool/aquifer/control/member"
	"github.com/aquifer-pool/aquifer/pki"
	"github.com/prometheus/client_golang/prometheus"
)

// The control plane is authenticated: the etcd member serves only mutual
// TLS, with certificates of the cluster CA kept in a PKI directory (by
// default DATA-DIR/tls; package pki):
//
//	ca.crt, ca.key             the cluster CA
//	member-NAME.crt/.key       etcd member NAME (server and peer)
//	client.crt/.key            the pager daemons' client certificate
//
// `aquifer etcd` and `serve --embedded` (without --etcd-endpoints) create
// what is missing on first start; daemons on other hosts get ca.crt,
// client.crt and client.key (--etcd-tls-dir).

// TLSDirName is the PKI directory inside a data directory.
const TLSDirName = "tls"

// ClientCert names the daemons' client certificate in a PKI directory;
// MemberCert that of an etcd member.
const ClientCert = "client"

// MemberCert names etcd member name's certificate (one directory may hold
// several members' certificates, all of one CA).
func MemberCert(name string) string { return "member-" + name }

// EtcdConfig configures an etcd member started by StartEtcd.
type EtcdConfig struct {
	member.Config
	// TLSDir holds the cluster CA and the certificates (default
	// Dir/tls).
	TLSDir string
	// Hosts are extra names (DNS names or IP addresses) the member's
	// certificate must cover, beyond its listen addresses, localhost and
	// this host's name.
	Hosts []string
}

// StartEtcd starts an etcd member (what `aquifer etcd` runs) that serves
// mutual TLS only, creating the cluster CA, its own certificate and the
// daemons' client certificate in c.TLSDir if they are missing.
func StartEtcd(ctx context.Context, c EtcdConfig) (*member.Member, error) {
	if c.Dir == "" {
		return nil, fieldErr("data-dir", "no data directory")
	}
	if c.TLSDir == "" {
		c.TLSDir = filepath.Join(c.Dir, TLSDirName)
	}
	if err := os.MkdirAll(c.Dir, 0o700); err != nil {
		return nil, fieldErr("data-dir", "%w", err)
	}
	if err := pki.CheckDir(c.Dir); err != nil {
		return nil, fieldErr("data-dir", "%w", err)
	}
	if c.Name == "" {
		c.Name = "aquifer"
	}
	files, _, err := memberPKI(c.TLSDir, c.Name, []string{c.ClientAddr, c.PeerAddr}, c.Hosts)
	if err != nil {
		return nil, fieldErr("tls-dir", "%w", err)
	}
	c.Config.TLS = &files
	return member.Start(ctx, c.Config)
}

// memberPKI makes sure dir holds the CA, member name's certificate
// covering addrs and hosts, and a client certificate.
func memberPKI(dir, name string, addrs, hosts []string) (files member.TLSFiles, client pki.Pair, err error) {
	err = pki.Locked(dir, func() error {
		files, client, err = ensureMemberPKI(dir, name, addrs, hosts)
		return err
	})
	return files, client, err
}

func ensureMemberPKI(dir, name string, addrs, hosts []string) (member.TLSFiles, pki.Pair, error) {
	ca, err := pki.OpenCA(dir, "aquifer cluster CA")
	if err != nil {
		return member.TLSFiles{}, pki.Pair{}, err
	}
	spec := pki.Spec{CN: "aquifer etcd member " + name, Server: true, Client: true, DNS: []string{"localhost"},
		IPs: []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback}}
	if h, err := os.Hostname(); err == nil && h != "" {
		spec.DNS = append(spec.DNS, h)
	}
	for _, a := range addrs {
		host, _, err := net.SplitHostPort(a)
		if err != nil {
			continue // "" (a free loopback port) is covered already
		}
		ip := net.ParseIP(host)
		switch {
		case ip == nil:
			spec.DNS = appendNew(spec.DNS, host)
		case ip.IsUnspecified():
			// Listening everywhere: every local address is a name.
			ifs, _ := net.InterfaceAddrs()
			for _, ia := range ifs {
				if n, ok := ia.(*net.IPNet); ok {
					spec.IPs = appendIP(spec.IPs, n.IP)
				}
			}
		default:
			spec.IPs = appendIP(spec.IPs, ip)
		}
	}
	for _, h := range hosts {
		if ip := net.ParseIP(h); ip != nil {
			spec.IPs = appendIP(spec.IPs, ip)
		} else {
			spec.DNS = appendNew(spec.DNS, h)
		}
	}
	mp, err := ca.Ensure(dir, MemberCert(name), spec)
	if err != nil {
		return member.TLSFiles{}, pki.Pair{}, err
	}
	cp, err := ca.Ensure(dir, ClientCert, pki.Spec{CN: "aquifer daemon", Client: true})
	if err != nil {
		return member.TLSFiles{}, pki.Pair{}, err
	}
	return member.TLSFiles{CAFile: filepath.Join(dir, pki.CACert), CertFile: mp.CertFile, KeyFile: mp.KeyFile}, cp, nil
}

func appendNew(l []string, s string) []string {
	for _, x := range l {
		if x == s {
			return l
		}
	}
	return append(l, s)
}

func appendIP(l []net.IP, ip net.IP) []net.IP {
	for _, x := range l {
		if x.Equal(ip) {
			return l
		}
	}
	return append(l, ip)
}

// etcdDefaults validates the control-plane credentials of a pod config.
func (c *PodConfig) etcdDefaults() error {
	if c.LeaseTTL < 0 {
		return fieldErr("lease-ttl", "%d: want a positive number of seconds", c.LeaseTTL)
	}
	if c.LeaseTTL == 0 {
		c.LeaseTTL = 10
	}
	external := c.EtcdTLSDir != "" || c.EtcdCA != "" || c.EtcdCert != "" || c.EtcdKey != "" || c.EtcdUser != "" || c.EtcdPasswordFile != ""
	if len(c.EtcdEndpoints) == 0 {
		if external {
			return fieldErr("etcd-tls-dir", "etcd credentials apply to an external cluster (--etcd-endpoints); the embedded member makes its own in DATA-DIR/tls")
		}
		return nil
	}
	for _, e := range c.EtcdEndpoints {
		if !strings.HasPrefix(e, "https://") {
			return fieldErr("etcd-endpoints", "%q: the control plane must be authenticated: give https:// endpoints with --etcd-tls-dir (aquifer etcd writes ca.crt, client.crt and client.key to DATA-DIR/tls)", e)
		}
	}
	if c.EtcdTLSDir != "" {
		if c.EtcdCA == "" {
			c.EtcdCA = filepath.Join(c.EtcdTLSDir, pki.CACert)
		}
		p := pki.Files(c.EtcdTLSDir, ClientCert)
		if c.EtcdCert == "" && c.EtcdKey == "" {
			c.EtcdCert, c.EtcdKey = p.CertFile, p.KeyFile
		}
	}
	if c.EtcdCA == "" {
		return fieldErr("etcd-ca", "an https:// control plane needs the CA that signed its certificate (--etcd-ca, or --etcd-tls-dir)")
	}
	if (c.EtcdCert == "") != (c.EtcdKey == "") {
		return fieldErr("etcd-cert", "give a client certificate and its key together (--etcd-cert and --etcd-key)")
	}
	if c.EtcdCert == "" && c.EtcdUser == "" {
		return fieldErr("etcd-cert", "no credentials for the control plane: give a client certificate (--etcd-tls-dir, or --etcd-cert and --etcd-key), an etcd user (--etcd-user and --etcd-password-file), or both")
	}
	if (c.EtcdUser == "") != (c.EtcdPasswordFile == "") {
		return fieldErr("etcd-user", "give an etcd user and its password file together (--etcd-user and --etcd-password-file)")
	}
	return nil
}

// etcdCredentials loads the credentials of an external control plane,
// checking that no other user can read the key or password.
func (c *PodConfig) etcdCredentials() (control.Credentials, error) {
	var cr control.Credentials
	var err error
	if c.EtcdCert != "" {
		cr.TLS, err = pki.ClientTLS(c.EtcdCA, pki.Pair{CertFile: c.EtcdCert, KeyFile: c.EtcdKey})
	} else {
		cr.TLS, err = pki.ClientTLS(c.EtcdCA, pki.Pair{})
		if err != nil && strings.Contains(err.Error(), "no client certificate") {
			err = nil // server-authenticated TLS; the etcd user authenticates this host
		}
	}
	if err != nil {
		return cr, fieldErr("etcd-tls-dir", "%w", err)
	}
	if c.EtcdUser != "" {
		if err := pki.CheckPrivate(c.EtcdPasswordFile); err != nil {
			return cr, fieldErr("etcd-password-file", "%w", err)
		}
		b, err := os.ReadFile(c.EtcdPasswordFile)
		if err != nil {
			return cr, fieldErr("etcd-password-file", "%w", err)
		}
		cr.Username, cr.Password = c.EtcdUser, strings.TrimRight(string(b), "\r\n")
	}
	return cr, nil
}

// connectControlPlane connects to the pod's control plane: the external
// cluster with the configured credentials, or an etcd member started in
// this process (mutual TLS, certificates in DATA-DIR/tls).
func (s *Server) connectControlPlane(ctx context.Context, c *PodConfig) error {
	if err := s.dialControlPlane(ctx, c); err != nil {
		return err
	}
	// Registrations whose lease was lost in an outage come back by
	// themselves; each time is logged and counted.
	again := prometheus.NewCounterVec(prometheus.CounterOpts{Name: "aquifer_control_reregistrations_total",
		Help: "Control-plane registrations re-created after their lease was lost (an etcd outage longer than --lease-ttl), by kind (host, memnode)."},
		[]string{"kind"})
	if err := s.cfg.Registry.Register(again); err != nil {
		return err
	}
	s.Plane.Logger = s.log
	s.Plane.Reregistered = func(kind, id string) { again.WithLabelValues(kind).Inc() }
	return nil
}

func (s *Server) dialControlPlane(ctx context.Context, c *PodConfig) error {
	if err := pki.CheckDir(c.DataDir); err != nil {
		return fieldErr("data-dir", "%w", err)
	}
	if len(c.EtcdEndpoints) > 0 {
		cr, err := c.etcdCredentials()
		if err != nil {
			return err
		}
		s.Plane, err = control.Connect(ctx, c.EtcdEndpoints, cr)
		return err
	}
	dir := filepath.Join(c.DataDir, TLSDirName)
	files, _, err := memberPKI(dir, "aquifer", nil, nil)
	if err != nil {
		return fieldErr("data-dir", "%w", err)
	}
	if s.etcd, err = member.Start(ctx, member.Config{Dir: c.DataDir, TLS: &files}); err != nil {
		return err
	}
	// The daemon is the member's process: its calls go straight into the
	// member's server (no loopback socket, TLS or gRPC framing: 0.6-1.2 ms
	// of an idle restore's PUT was that round trip, and it waits behind
	// every busy vCPU thread at concurrency). Other processes (the CLI,
	// other hosts) dial its endpoint with client certificates.
	s.Plane, err = control.FromClient(ctx, s.etcd.Client(), s.etcd.Endpoints)
	return err
}
