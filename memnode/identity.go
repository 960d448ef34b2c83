package memnode

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"

	"github.com/aquifer-pool/aquifer/internal/atomicfile"
	"github.com/aquifer-pool/aquifer/pki"
)

// Identities on the memory-node protocol under mutual TLS. Every process
// has its own certificate of the cluster CA (package pki); its identity is
// the certificate's common name:
//
//	host POD/HOST     a pager daemon (client usage only)
//	memnode NAME      a memory node (server usage, and client usage for etcd)
//
// A memory node admits hosts only, a host talks to memory nodes only, so
// no other certificate of the CA (an etcd member's, the daemons' shared
// etcd client certificate) passes either way.
//
// A TLS directory holds the CA certificate and the process's own pair:
//
//	ca.crt                    the cluster CA (never ca.key)
//	memnode.crt, memnode.key  a memory node's certificate (NodeCertName)
//	host.crt, host.key        a host's certificate (HostCertName)

// Certificate names inside a TLS directory.
const (
	NodeCertName = "memnode"
	HostCertName = "host"
)

// Role prefixes of identities.
const (
	hostRole = "host "
	nodeRole = "memnode "
)

// HostIdentity is the identity (certificate CN) of host in pod.
func HostIdentity(pod, host string) string { return hostRole + pod + "/" + host }

// NodeIdentity is the identity (certificate CN) of memory node name.
func NodeIdentity(name string) string { return nodeRole + name }

// ParseHostIdentity splits a host identity into pod and host.
func ParseHostIdentity(id string) (pod, host string, ok bool) {
	rest, ok := strings.CutPrefix(id, hostRole)
	if !ok {
		return "", "", false
	}
	pod, host, ok = strings.Cut(rest, "/")
	return pod, host, ok && validName(pod) && validName(host)
}

// IsNodeIdentity says whether id names a memory node.
func IsNodeIdentity(id string) bool {
	n, ok := strings.CutPrefix(id, nodeRole)
	return ok && validName(n)
}

// NodeCertSpec is a memory node's certificate: its identity, server usage
// (hosts dial it) and client usage (it is an etcd client), covering
// localhost, the loopback addresses and hosts (the IP addresses or DNS
// names hosts reach it by).
func NodeCertSpec(name string, hosts []string) pki.Spec {
	spec := pki.Spec{CN: NodeIdentity(name), Server: true, Client: true, DNS: []string{"localhost"},
		IPs: []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback}}
	for _, h := range hosts {
		if ip := net.ParseIP(h); ip != nil {
			if !ip.IsUnspecified() && !containsIP(spec.IPs, ip) {
				spec.IPs = append(spec.IPs, ip)
			}
		} else if h != "" && !containsStr(spec.DNS, h) {
			spec.DNS = append(spec.DNS, h)
		}
	}
	return spec
}

// HostCertSpec is a host's certificate: its identity, client usage.
func HostCertSpec(pod, host string) pki.Spec {
	return pki.Spec{CN: HostIdentity(pod, host), Client: true}
}

// IssueNodeCert makes sure dir holds ca.crt and a certificate for memory
// node name covering hosts, issued by the CA in caDir (which must hold
// ca.key). A valid existing certificate is kept.
func IssueNodeCert(caDir, dir, name string, hosts []string) (pki.Pair, error) {
	if !validName(name) {
		return pki.Pair{}, fmt.Errorf("node name %q: use letters, digits, '.', '_' or '-'", name)
	}
	return issue(caDir, dir, NodeCertName, NodeCertSpec(name, hosts))
}

// IssueHostCert makes sure dir holds ca.crt and a certificate for host in
// pod, issued by the CA in caDir.
func IssueHostCert(caDir, dir, pod, host string) (pki.Pair, error) {
	if !validName(pod) || !validName(host) {
		return pki.Pair{}, fmt.Errorf("pod %q, host %q: use letters, digits, '.', '_' or '-'", pod, host)
	}
	return issue(caDir, dir, HostCertName, HostCertSpec(pod, host))
}

func issue(caDir, dir, name string, spec pki.Spec) (pki.Pair, error) {
	ca, err := pki.LoadCA(caDir)
	if err != nil {
		return pki.Pair{}, err
	}
	if ca.Key == nil {
		return pki.Pair{}, fmt.Errorf("%s has no %s: issue certificates where the cluster CA's key lives", caDir, pki.CAKey)
	}
	var p pki.Pair
	err = pki.Locked(dir, func() error {
		if err := pki.CheckDir(dir); err != nil {
			return err
		}
		b, err := os.ReadFile(filepath.Join(caDir, pki.CACert))
		if err != nil {
			return err
		}
		if err := atomicfile.WriteFile(filepath.Join(dir, pki.CACert), b, 0o600); err != nil {
			return err
		}
		p, err = ca.Ensure(dir, name, spec)
		return err
	})
	return p, err
}

// ErrRole marks a certificate of the cluster CA whose identity may not
// take this part (a memory node's presented as a host's, an etcd
// member's, ...).
var ErrRole = errors.New("certificate has the wrong role")

// ServerTLS is a memory node's TLS configuration from its TLS directory:
// it presents memnode.crt and admits only clients with a certificate of
// the CA in ca.crt (the host role is checked after the handshake, so that
// the refusal reaches the client as a clear error frame). It returns the
// node's own identity.
func ServerTLS(dir string) (*tls.Config, string, error) {
	p := pki.Files(dir, NodeCertName)
	c, err := pki.ServerTLS(filepath.Join(dir, pki.CACert), p)
	if err != nil {
		return nil, "", fmt.Errorf("--tls-dir %s: %w", dir, err)
	}
	id, err := leafCN(c)
	if err != nil {
		return nil, "", err
	}
	if !IsNodeIdentity(id) {
		return nil, "", fmt.Errorf("%s names %q, not a memory node (want %q): %w", p.CertFile, id, NodeIdentity("NAME"), ErrRole)
	}
	c.MinVersion = tls.VersionTLS13
	return c, id, nil
}

// ClientTLS is a host's TLS configuration for memory nodes from its TLS
// directory: it presents host.crt and accepts only servers whose
// certificate, of the CA in ca.crt, names a memory node and covers the
// address dialled (the transport sets ServerName per node). It returns the
// host's own identity.
func ClientTLS(dir string) (*tls.Config, string, error) {
	p := pki.Files(dir, HostCertName)
	c, err := pki.ClientTLS(filepath.Join(dir, pki.CACert), p)
	if err != nil {
		return nil, "", fmt.Errorf("memory-node TLS directory %s: %w", dir, err)
	}
	id, err := leafCN(c)
	if err != nil {
		return nil, "", err
	}
	if _, _, ok := ParseHostIdentity(id); !ok {
		return nil, "", fmt.Errorf("%s names %q, not a host (want %q): %w", p.CertFile, id, HostIdentity("POD", "HOST"), ErrRole)
	}
	c.MinVersion = tls.VersionTLS13
	c.VerifyConnection = func(cs tls.ConnectionState) error {
		if len(cs.PeerCertificates) == 0 {
			return errors.New("memory node presented no certificate")
		}
		if cn := cs.PeerCertificates[0].Subject.CommonName; !IsNodeIdentity(cn) {
			return fmt.Errorf("the server's certificate names %q, not a memory node: %w", cn, ErrRole)
		}
		return nil
	}
	return c, id, nil
}

// PeerIdentity is the identity of the verified peer of a TLS connection.
func PeerIdentity(cs tls.ConnectionState) string {
	if len(cs.PeerCertificates) == 0 {
		return ""
	}
	return cs.PeerCertificates[0].Subject.CommonName
}

func leafCN(c *tls.Config) (string, error) {
	if len(c.Certificates) == 0 || len(c.Certificates[0].Certificate) == 0 {
		return "", errors.New("no certificate loaded")
	}
	leaf, err := x509.ParseCertificate(c.Certificates[0].Certificate[0])
	if err != nil {
		return "", fmt.Errorf("parsing the loaded certificate: %w", err)
	}
	return leaf.Subject.CommonName, nil
}

// validName: the names pods, hosts and nodes may have.
func validName(n string) bool {
	if n == "" || len(n) > 64 {
		return false
	}
	for _, r := range n {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '.' || r == '_' || r == '-') {
			return false
		}
	}
	return true
}

func containsIP(l []net.IP, ip net.IP) bool {
	for _, x := range l {
		if x.Equal(ip) {
			return true
		}
	}
	return false
}

func containsStr(l []string, s string) bool {
	for _, x := range l {
		if x == s {
			return true
		}
	}
	return false
}
