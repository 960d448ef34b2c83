package pki

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"slices"
	"time"

	"github.com/aquifer-pool/aquifer/internal/atomicfile"
	"golang.org/x/sys/unix"
)

// File names of the CA inside a PKI directory.
const (
	CACert = "ca.crt"
	CAKey  = "ca.key"
)

// Validity of new certificates; a certificate within Renew of its expiry
// is reissued by Ensure.
const (
	CAValidity   = 10 * 365 * 24 * time.Hour
	LeafValidity = 2 * 365 * 24 * time.Hour
	Renew        = 30 * 24 * time.Hour
)

// ErrExposed marks a secret file other users can read, or a directory of
// secrets they can write: refused, never silently replaced.
var ErrExposed = errors.New("exposed to other users")

// CA is a loaded certificate authority. Key is nil for a CA whose key is
// not on this host: it can verify, not issue.
type CA struct {
	Dir  string
	Cert *x509.Certificate
	Key  *ecdsa.PrivateKey
}

// Spec says what a certificate is for.
type Spec struct {
	// CN is the subject's common name (etcd reports it; it names the
	// holder in logs).
	CN string
	// Server and Client select the extended key usages.
	Server, Client bool
	// DNS and IPs are the names a server certificate must cover.
	DNS []string
	IPs []net.IP
}

// Pair names a certificate's files.
type Pair struct {
	CertFile, KeyFile string
}

// Locked runs fn holding an exclusive lock on dir (created mode 0700):
// processes that set up certificates in one directory at once (several
// etcd members of one machine) never make two CAs or overwrite each
// other's files half-way.
func Locked(dir string, fn func() error) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	f, err := os.OpenFile(filepath.Join(dir, ".lock"), os.O_RDWR|os.O_CREATE|unix.O_CLOEXEC, 0o600)
	if err != nil {
		return err
	}
	defer f.Close()
	for {
		err := unix.Flock(int(f.Fd()), unix.LOCK_EX)
		if err == nil {
			break
		}
		if !errors.Is(err, unix.EINTR) {
			return fmt.Errorf("locking %s: %w", dir, err)
		}
	}
	return fn()
}

// Files returns the file names of certificate name in dir.
func Files(dir, name string) Pair {
	return Pair{CertFile: filepath.Join(dir, name+".crt"), KeyFile: filepath.Join(dir, name+".key")}
}

// OpenCA loads the CA of dir, creating it (named cn) if dir holds none.
// The directory is created mode 0700.
func OpenCA(dir, cn string) (*CA, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	if err := CheckDir(dir); err != nil {
		return nil, err
	}
	certFile, keyFile := filepath.Join(dir, CACert), filepath.Join(dir, CAKey)
	if _, err := os.Stat(certFile); err == nil {
		return LoadCA(dir)
	} else if !errors.Is(err, os.ErrNotExist) {
		return nil, err
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("generating the CA key: %w", err)
	}
	sn, err := serial()
	if err != nil {
		return nil, err
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          sn,
		Subject:               pkix.Name{CommonName: cn, Organization: []string{"aquifer"}},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(CAValidity),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLenZero:        true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, fmt.Errorf("signing the CA certificate: %w", err)
	}
	// Key first: a certificate without its key would be taken for a CA
	// whose key lives elsewhere.
	if err := writeKey(keyFile, key); err != nil {
		return nil, err
	}
	if err := atomicfile.WriteFile(certFile, pemBlock("CERTIFICATE", der), 0o600); err != nil {
		return nil, err
	}
	return LoadCA(dir)
}

// LoadCA loads dir's CA certificate and, if present, its key.
func LoadCA(dir string) (*CA, error) {
	cert, err := readCert(filepath.Join(dir, CACert))
	if err != nil {
		return nil, err
	}
	if !cert.IsCA {
		return nil, fmt.Errorf("%s is not a CA certificate", filepath.Join(dir, CACert))
	}
	ca := &CA{Dir: dir, Cert: cert}
	keyFile := filepath.Join(dir, CAKey)
	if _, err := os.Stat(keyFile); err == nil {
		if ca.Key, err = readKey(keyFile); err != nil {
			return nil, err
		}
		if !ca.Key.PublicKey.Equal(cert.PublicKey) {
			return nil, fmt.Errorf("%s does not belong to %s", keyFile, filepath.Join(dir, CACert))
		}
	}
	return ca, nil
}

// Ensure makes sure dir holds certificate name for spec, signed by ca:
// an existing one is kept if it verifies against ca, covers spec and is
// not about to expire; otherwise a new key and certificate are issued
// (which needs ca's key). It returns the files.
func (ca *CA) Ensure(dir, name string, spec Spec) (Pair, error) {
	p := Files(dir, name)
	if err := ca.check(p, spec); err == nil {
		return p, nil
	} else if errors.Is(err, ErrExposed) {
		return Pair{}, err
	} else if ca.Key == nil {
		return Pair{}, fmt.Errorf("%s cannot be used (%v) and %s has no CA key to issue a new one", p.CertFile, err, ca.Dir)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return Pair{}, err
	}
	if err := CheckDir(dir); err != nil {
		return Pair{}, err
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return Pair{}, fmt.Errorf("generating the key of %s: %w", name, err)
	}
	sn, err := serial()
	if err != nil {
		return Pair{}, err
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber: sn,
		Subject:      pkix.Name{CommonName: spec.CN, Organization: []string{"aquifer"}},
		NotBefore:    now.Add(-time.Hour),
		NotAfter:     minTime(now.Add(LeafValidity), ca.Cert.NotAfter),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		DNSNames:     spec.DNS,
		IPAddresses:  spec.IPs,
	}
	if spec.Server {
		tmpl.ExtKeyUsage = append(tmpl.ExtKeyUsage, x509.ExtKeyUsageServerAuth)
	}
	if spec.Client {
		tmpl.ExtKeyUsage = append(tmpl.ExtKeyUsage, x509.ExtKeyUsageClientAuth)
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.Cert, &key.PublicKey, ca.Key)
	if err != nil {
		return Pair{}, fmt.Errorf("signing the certificate of %s: %w", name, err)
	}
	if err := writeKey(p.KeyFile, key); err != nil {
		return Pair{}, err
	}
	if err := atomicfile.WriteFile(p.CertFile, pemBlock("CERTIFICATE", der), 0o600); err != nil {
		return Pair{}, err
	}
	return p, ca.check(p, spec)
}

// check says why p cannot serve spec under ca (nil: it can).
func (ca *CA) check(p Pair, spec Spec) error {
	cert, err := readCert(p.CertFile)
	if err != nil {
		return err
	}
	key, err := readKey(p.KeyFile)
	if err != nil {
		return err
	}
	if !key.PublicKey.Equal(cert.PublicKey) {
		return fmt.Errorf("key %s does not belong to it", p.KeyFile)
	}
	var usages []x509.ExtKeyUsage
	if spec.Server {
		usages = append(usages, x509.ExtKeyUsageServerAuth)
	}
	if spec.Client {
		usages = append(usages, x509.ExtKeyUsageClientAuth)
	}
	for _, u := range usages {
		if !slices.Contains(cert.ExtKeyUsage, u) {
			return fmt.Errorf("it lacks extended key usage %v", u)
		}
	}
	roots := x509.NewCertPool()
	roots.AddCert(ca.Cert)
	if _, err := cert.Verify(x509.VerifyOptions{Roots: roots, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err != nil {
		return fmt.Errorf("it does not verify against %s: %w", filepath.Join(ca.Dir, CACert), err)
	}
	if time.Until(cert.NotAfter) < Renew {
		return fmt.Errorf("it expires %s", cert.NotAfter.Format(time.RFC3339))
	}
	for _, d := range spec.DNS {
		if !slices.Contains(cert.DNSNames, d) {
			return fmt.Errorf("it does not name %s", d)
		}
	}
	for _, ip := range spec.IPs {
		if !slices.ContainsFunc(cert.IPAddresses, ip.Equal) {
			return fmt.Errorf("it does not name %s", ip)
		}
	}
	return nil
}

// ClientTLS is the TLS configuration of a client that trusts caFile and
// presents the certificate p (mutual TLS). Key files are checked first.
func ClientTLS(caFile string, p Pair) (*tls.Config, error) {
	pool, cert, err := load(caFile, p)
	if err != nil {
		return nil, err
	}
	return &tls.Config{RootCAs: pool, Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}, nil
}

// ServerTLS is the TLS configuration of a server that presents p and
// admits only clients with a certificate caFile's CA issued.
func ServerTLS(caFile string, p Pair) (*tls.Config, error) {
	pool, cert, err := load(caFile, p)
	if err != nil {
		return nil, err
	}
	return &tls.Config{ClientCAs: pool, ClientAuth: tls.RequireAndVerifyClientCert, Certificates: []tls.Certificate{cert},
		MinVersion: tls.VersionTLS12}, nil
}

func load(caFile string, p Pair) (*x509.CertPool, tls.Certificate, error) {
	b, err := os.ReadFile(caFile)
	if err != nil {
		return nil, tls.Certificate{}, fmt.Errorf("reading the cluster CA: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(b) {
		return nil, tls.Certificate{}, fmt.Errorf("%s holds no PEM certificate", caFile)
	}
	if p.CertFile == "" && p.KeyFile == "" {
		return pool, tls.Certificate{}, fmt.Errorf("no client certificate and key given (mutual TLS needs both)")
	}
	if err := CheckPrivate(p.KeyFile); err != nil {
		return nil, tls.Certificate{}, err
	}
	cert, err := tls.LoadX509KeyPair(p.CertFile, p.KeyFile)
	if err != nil {
		return nil, tls.Certificate{}, fmt.Errorf("%s / %s: %w", p.CertFile, p.KeyFile, err)
	}
	return pool, cert, nil
}

// CheckPrivate refuses a secret file (a key, the pod secret) that other
// users could read or that sits in a directory they could write, with the
// chmod that fixes it.
func CheckPrivate(path string) error {
	st, err := os.Stat(path)
	if err != nil {
		return err
	}
	if !st.Mode().IsRegular() {
		return fmt.Errorf("%s is not a regular file", path)
	}
	if perm := st.Mode().Perm(); perm&0o077 != 0 {
		return fmt.Errorf("%s is readable by other users (mode %04o; %w): run `chmod 600 %s`", path, perm, ErrExposed, path)
	}
	return CheckDir(filepath.Dir(path))
}

// CheckDir refuses a directory of secrets that users other than its owner
// could write (they could replace a key or certificate), with the chmod
// that fixes it.
func CheckDir(dir string) error {
	st, err := os.Stat(dir)
	if err != nil {
		return err
	}
	if perm := st.Mode().Perm(); perm&0o022 != 0 && st.Mode()&os.ModeSticky == 0 {
		return fmt.Errorf("%s is writable by other users (mode %04o; %w): run `chmod go-w %s`", dir, perm, ErrExposed, dir)
	}
	return nil
}

func readCert(path string) (*x509.Certificate, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	blk, _ := pem.Decode(b)
	if blk == nil || blk.Type != "CERTIFICATE" {
		return nil, fmt.Errorf("%s holds no PEM certificate", path)
	}
	c, err := x509.ParseCertificate(blk.Bytes)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return c, nil
}

func readKey(path string) (*ecdsa.PrivateKey, error) {
	if err := CheckPrivate(path); err != nil {
		return nil, err
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	blk, _ := pem.Decode(b)
	if blk == nil {
		return nil, fmt.Errorf("%s holds no PEM key", path)
	}
	k, err := x509.ParsePKCS8PrivateKey(blk.Bytes)
	if err != nil {
		if ek, err2 := x509.ParseECPrivateKey(blk.Bytes); err2 == nil {
			return ek, nil
		}
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	ek, ok := k.(*ecdsa.PrivateKey)
	if !ok {
		return nil, fmt.Errorf("%s is not an ECDSA key", path)
	}
	return ek, nil
}

func writeKey(path string, k *ecdsa.PrivateKey) error {
	der, err := x509.MarshalPKCS8PrivateKey(k)
	if err != nil {
		return fmt.Errorf("encoding key %s: %w", path, err)
	}
	if err := atomicfile.WriteFile(path, pemBlock("PRIVATE KEY", der), 0o600); err != nil {
		return err
	}
	return nil
}

func pemBlock(typ string, der []byte) []byte {
	var b bytes.Buffer
	pem.Encode(&b, &pem.Block{Type: typ, Bytes: der})
	return b.Bytes()
}

func serial() (*big.Int, error) {
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return nil, fmt.Errorf("drawing a serial number: %w", err)
	}
	return n, nil
}

func minTime(a, b time.Time) time.Time {
	if a.Before(b) {
		return a
	}
	return b
}
