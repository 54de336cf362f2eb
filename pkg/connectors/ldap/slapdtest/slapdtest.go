// Package slapdtest starts a private OpenLDAP server (Debian's slapd) for tests: the LDAP
// connector's own and the end-to-end ones. Each server has its own configuration, database and
// port, and the ppolicy overlay with a default policy, so a locked account really cannot bind.
package slapdtest

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	goldap "github.com/go-ldap/ldap/v3"
)

// The directory every server holds: its suffix, its administrator (the rootdn) and the
// organisational units for people and groups.
const (
	Suffix   = "dc=example,dc=org"
	AdminDN  = "cn=admin," + Suffix
	AdminPW  = "s3cr3t-admin-pw"
	PeopleDN = "ou=people," + Suffix
	GroupsDN = "ou=groups," + Suffix
)

const hint = "apt-get install slapd ldap-utils (.ci/run installs them)"

// Options shape a server.
type Options struct {
	// TLS gives the server a certificate and an ldaps:// listener too.
	TLS bool
	// LDIF is added to the directory after the base entries (groups, say; a groupOfNames
	// needs a member from the start, AdminDN will do).
	LDIF string
}

// Server is one running slapd.
type Server struct {
	URL string
	// With TLS: LDAPSURL is the ldaps:// listener and CAFile the CA that signed the server's
	// certificate (the ldap:// listener then offers StartTLS).
	LDAPSURL string
	CAFile   string
}

const conf = `include /etc/ldap/schema/core.schema
include /etc/ldap/schema/cosine.schema
include /etc/ldap/schema/inetorgperson.schema
include /etc/ldap/schema/nis.schema
modulepath /usr/lib/ldap
moduleload back_mdb
moduleload ppolicy
pidfile {{dir}}/slapd.pid
database mdb
maxsize 104857600
suffix "` + Suffix + `"
rootdn "` + AdminDN + `"
rootpw ` + AdminPW + `
directory {{dir}}/db
overlay ppolicy
ppolicy_default "cn=default,ou=policies,` + Suffix + `"
`

const base = `dn: ` + Suffix + `
objectClass: dcObject
objectClass: organization
o: Example
dc: example

dn: ` + PeopleDN + `
objectClass: organizationalUnit
ou: people

dn: ` + GroupsDN + `
objectClass: organizationalUnit
ou: groups

dn: ou=policies,` + Suffix + `
objectClass: organizationalUnit
ou: policies

dn: cn=default,ou=policies,` + Suffix + `
objectClass: device
objectClass: pwdPolicy
cn: default
pwdAttribute: userPassword
pwdLockout: TRUE
`

// Tool finds an OpenLDAP program on PATH or in /usr/sbin, where Debian puts slapd.
func Tool(tb testing.TB, name string) string {
	tb.Helper()
	if p, err := exec.LookPath(name); err == nil {
		return p
	}
	p := filepath.Join("/usr/sbin", name)
	if _, err := os.Stat(p); err != nil {
		tb.Fatalf("%s not found: %s", name, hint)
	}
	return p
}

// Start starts slapd on a free loopback port, in the foreground so the test owns the process,
// and stops it when the test ends.
func Start(tb testing.TB, o Options) *Server {
	tb.Helper()
	bin, slapadd := Tool(tb, "slapd"), Tool(tb, "slapadd")
	dir := tb.TempDir()
	if err := os.Mkdir(filepath.Join(dir, "db"), 0o700); err != nil {
		tb.Fatal(err)
	}
	confFile := filepath.Join(dir, "slapd.conf")
	confText := strings.ReplaceAll(conf, "{{dir}}", dir)
	var caFile string
	if o.TLS {
		var certFile, keyFile string
		caFile, certFile, keyFile = writeCerts(tb, dir)
		confText = "TLSCertificateFile " + certFile + "\nTLSCertificateKeyFile " + keyFile + "\n" + confText
	}
	if err := os.WriteFile(confFile, []byte(confText), 0o600); err != nil {
		tb.Fatal(err)
	}
	seed := base
	if o.LDIF != "" {
		seed += "\n" + strings.TrimLeft(o.LDIF, "\n")
	}
	add := exec.Command(slapadd, "-q", "-f", confFile)
	add.Stdin = strings.NewReader(seed)
	if out, err := add.CombinedOutput(); err != nil {
		tb.Fatalf("slapadd: %v\n%s", err, out)
	}

	var lastErr error
	for attempt := 0; attempt < 5; attempt++ {
		url := "ldap://" + freeAddr(tb)
		listen := url + "/"
		ldapsURL := ""
		if o.TLS {
			ldapsURL = "ldaps://" + freeAddr(tb)
			listen += " " + ldapsURL + "/"
		}
		// Read only after stop: slapd has exited and its output is all written.
		var stderr bytes.Buffer
		// -d 0 keeps slapd in the foreground, so the test owns the process and Pdeathsig ends
		// it even if the test binary is killed.
		cmd := exec.Command(bin, "-f", confFile, "-h", listen, "-d", "0")
		cmd.Stderr = &stderr
		cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
		if err := cmd.Start(); err != nil {
			tb.Fatalf("start slapd: %v", err)
		}
		exited := make(chan struct{})
		go func() { cmd.Wait(); close(exited) }()
		stop := func() {
			cmd.Process.Signal(syscall.SIGTERM)
			select {
			case <-exited:
			case <-time.After(5 * time.Second):
				cmd.Process.Kill()
				<-exited
			}
		}
		if err := waitReady(url, exited); err != nil {
			stop()
			lastErr = fmt.Errorf("%v: %s", err, stderr.String())
			continue // most likely the port was taken in between
		}
		tb.Cleanup(stop)
		return &Server{URL: url, LDAPSURL: ldapsURL, CAFile: caFile}
	}
	tb.Fatalf("slapd did not start: %v", lastErr)
	return nil
}

// Bind tries a simple bind as dn with password on a fresh connection.
func (s *Server) Bind(dn, password string) error {
	conn, err := goldap.DialURL(s.URL)
	if err != nil {
		return err
	}
	defer conn.Close()
	return conn.Bind(dn, password)
}

func freeAddr(tb testing.TB) string {
	tb.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

func waitReady(url string, exited <-chan struct{}) error {
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		select {
		case <-exited:
			return fmt.Errorf("slapd exited")
		default:
		}
		if conn, err := goldap.DialURL(url); err == nil {
			err = conn.Bind(AdminDN, AdminPW)
			conn.Close()
			if err == nil {
				return nil
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
	return fmt.Errorf("slapd not ready after 10s")
}

// writeCerts writes a CA and a server certificate for 127.0.0.1 signed by it.
func writeCerts(tb testing.TB, dir string) (caFile, certFile, keyFile string) {
	tb.Helper()
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		tb.Fatal(err)
	}
	now := time.Now()
	caTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "tenure test CA"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		tb.Fatal(err)
	}
	ca, _ := x509.ParseCertificate(caDER)
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		tb.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "127.0.0.1"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(24 * time.Hour),
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)}, DNSNames: []string{"localhost"},
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
	if err != nil {
		tb.Fatal(err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		tb.Fatal(err)
	}
	write := func(name, typ string, der []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
			tb.Fatal(err)
		}
		return p
	}
	return write("ca.pem", "CERTIFICATE", caDER), write("cert.pem", "CERTIFICATE", der), write("key.pem", "PRIVATE KEY", keyDER)
}
