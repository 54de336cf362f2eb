package ldap_test

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

const (
	suffix    = "dc=example,dc=org"
	adminDN   = "cn=admin," + suffix
	adminPW   = "s3cr3t-admin-pw"
	peopleDN  = "ou=people," + suffix
	groupsDN  = "ou=groups," + suffix
	slapdHint = "slapd is not installed: apt-get install slapd ldap-utils (CI installs them)"
)

// slapd is a private OpenLDAP server for one test: its own config, database and port, with
// the ppolicy overlay and a default policy, so a locked account really cannot bind.
type slapd struct {
	URL string
	// With TLS: LDAPSURL is an ldaps:// listener and CAFile the CA that signed the server's
	// certificate (the ldap:// listener then offers StartTLS).
	LDAPSURL string
	CAFile   string
}

func findTool(t *testing.T, name string) string {
	t.Helper()
	if p, err := exec.LookPath(name); err == nil {
		return p
	}
	p := filepath.Join("/usr/sbin", name)
	if _, err := os.Stat(p); err != nil {
		t.Fatalf("%s: %s not found", slapdHint, name)
	}
	return p
}

const slapdConf = `include /etc/ldap/schema/core.schema
include /etc/ldap/schema/cosine.schema
include /etc/ldap/schema/inetorgperson.schema
include /etc/ldap/schema/nis.schema
modulepath /usr/lib/ldap
moduleload back_mdb
moduleload ppolicy
pidfile {{dir}}/slapd.pid
database mdb
maxsize 104857600
suffix "` + suffix + `"
rootdn "` + adminDN + `"
rootpw ` + adminPW + `
directory {{dir}}/db
overlay ppolicy
ppolicy_default "cn=default,ou=policies,` + suffix + `"
`

// The groups need a member from the start (groupOfNames requires one), so each has the
// admin as a placeholder. "readers" is a groupOfNames, "writers" a groupOfUniqueNames, so
// both member attributes are exercised.
const seed = `dn: ` + suffix + `
objectClass: dcObject
objectClass: organization
o: Example
dc: example

dn: ` + peopleDN + `
objectClass: organizationalUnit
ou: people

dn: ` + groupsDN + `
objectClass: organizationalUnit
ou: groups

dn: ou=policies,` + suffix + `
objectClass: organizationalUnit
ou: policies

dn: cn=default,ou=policies,` + suffix + `
objectClass: device
objectClass: pwdPolicy
cn: default
pwdAttribute: userPassword
pwdLockout: TRUE

dn: cn=readers,` + groupsDN + `
objectClass: groupOfNames
cn: readers
member: ` + adminDN + `

dn: cn=writers,` + groupsDN + `
objectClass: groupOfUniqueNames
cn: writers
uniqueMember: ` + adminDN + `
`

// startSlapd starts slapd on a free loopback port and stops it when t ends.
func startSlapd(t *testing.T) *slapd { t.Helper(); return startSlapdWith(t, false) }

// startSlapdTLS also gives slapd a certificate and an ldaps:// listener.
func startSlapdTLS(t *testing.T) *slapd { t.Helper(); return startSlapdWith(t, true) }

func startSlapdWith(t *testing.T, withTLS bool) *slapd {
	t.Helper()
	bin := findTool(t, "slapd")
	slapadd := findTool(t, "slapadd")
	dir := t.TempDir()
	if err := os.Mkdir(filepath.Join(dir, "db"), 0o700); err != nil {
		t.Fatal(err)
	}
	conf := filepath.Join(dir, "slapd.conf")
	confText := strings.ReplaceAll(slapdConf, "{{dir}}", dir)
	var caFile string
	if withTLS {
		var certFile, keyFile string
		caFile, certFile, keyFile = writeCerts(t, dir)
		confText = "TLSCertificateFile " + certFile + "\nTLSCertificateKeyFile " + keyFile + "\n" + confText
	}
	if err := os.WriteFile(conf, []byte(confText), 0o600); err != nil {
		t.Fatal(err)
	}
	add := exec.Command(slapadd, "-q", "-f", conf)
	add.Stdin = strings.NewReader(seed)
	if out, err := add.CombinedOutput(); err != nil {
		t.Fatalf("slapadd: %v\n%s", err, out)
	}

	var lastErr error
	for attempt := 0; attempt < 5; attempt++ {
		port := freePort(t)
		url := fmt.Sprintf("ldap://127.0.0.1:%d", port)
		listen := url + "/"
		ldapsURL := ""
		if withTLS {
			ldapsURL = fmt.Sprintf("ldaps://127.0.0.1:%d", freePort(t))
			listen += " " + ldapsURL + "/"
		}
		var stderr bytes.Buffer
		// -d 0 keeps slapd in the foreground, so the test owns the process and Pdeathsig ends
		// it even if the test binary is killed.
		cmd := exec.Command(bin, "-f", conf, "-h", listen, "-d", "0")
		cmd.Stderr = &stderr
		cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
		if err := cmd.Start(); err != nil {
			t.Fatalf("start slapd: %v", err)
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
		t.Cleanup(stop)
		return &slapd{URL: url, LDAPSURL: ldapsURL, CAFile: caFile}
	}
	t.Fatalf("slapd did not start: %v", lastErr)
	return nil
}

func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
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
			err = conn.Bind(adminDN, adminPW)
			conn.Close()
			if err == nil {
				return nil
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
	return fmt.Errorf("slapd not ready after 10s")
}

// admin returns a connection bound as the rootdn, for checking the directory directly.
func (s *slapd) admin(t *testing.T) *goldap.Conn {
	t.Helper()
	conn, err := goldap.DialURL(s.URL)
	if err != nil {
		t.Fatal(err)
	}
	if err := conn.Bind(adminDN, adminPW); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

// bind tries a simple bind as dn with password on a fresh connection.
func (s *slapd) bind(dn, password string) error {
	conn, err := goldap.DialURL(s.URL)
	if err != nil {
		return err
	}
	defer conn.Close()
	return conn.Bind(dn, password)
}

// writeCerts writes a CA and a server certificate for 127.0.0.1 signed by it.
func writeCerts(t *testing.T, dir string) (caFile, certFile, keyFile string) {
	t.Helper()
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	caTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "tenure test CA"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	ca, _ := x509.ParseCertificate(caDER)
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "127.0.0.1"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(24 * time.Hour),
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)}, DNSNames: []string{"localhost"},
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	write := func(name, typ string, der []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	return write("ca.pem", "CERTIFICATE", caDER), write("cert.pem", "CERTIFICATE", der), write("key.pem", "PRIVATE KEY", keyDER)
}
