package main

import (
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
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tenure-dev/tenure/pkg/connector"
	"github.com/tenure-dev/tenure/pkg/connectors/remote"
)

// certs writes a throwaway CA and, signed by it, a server certificate for 127.0.0.1 and a
// client certificate, and returns the PEM files' paths.
func certs(t *testing.T) (ca, serverCert, serverKey, clientCert, clientKey string) {
	t.Helper()
	dir := t.TempDir()
	write := func(name, typ string, der []byte) string {
		path := filepath.Join(dir, name)
		if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
			t.Fatal(err)
		}
		return path
	}
	caKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	caTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "inventory test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	caCert, _ := x509.ParseCertificate(caDER)
	ca = write("ca.pem", "CERTIFICATE", caDER)
	leaf := func(name string, serial int64, usage x509.ExtKeyUsage, ips []net.IP) (string, string) {
		key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		tmpl := &x509.Certificate{
			SerialNumber: big.NewInt(serial), Subject: pkix.Name{CommonName: name},
			NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
			KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{usage}, IPAddresses: ips,
		}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, caCert, &key.PublicKey, caKey)
		if err != nil {
			t.Fatal(err)
		}
		keyDER, _ := x509.MarshalECPrivateKey(key)
		return write(name+".pem", "CERTIFICATE", der), write(name+"-key.pem", "EC PRIVATE KEY", keyDER)
	}
	serverCert, serverKey = leaf("server", 2, x509.ExtKeyUsageServerAuth, []net.IP{net.IPv4(127, 0, 0, 1)})
	clientCert, clientKey = leaf("tenure", 3, x509.ExtKeyUsageClientAuth, nil)
	return ca, serverCert, serverKey, clientCert, clientKey
}

// The connector's own TLS flags give mutual TLS: tenure with its client certificate gets
// in, tenure without one does not.
func TestMutualTLS(t *testing.T) {
	ca, srvCert, srvKey, cliCert, cliKey := certs(t)
	p := start(t, filepath.Join(t.TempDir(), "inventory.json"), "-tls-cert", srvCert, "-tls-key", srvKey, "-tls-client-ca", ca)
	config := func(tls string) []byte {
		return fmt.Appendf(nil, "address: %s\ntls: %s\ntoken: %s\ntimeout: 2s\n", p.addr, tls, token)
	}
	c, err := connector.Open(t.Context(), remote.TypeName, config(fmt.Sprintf("{ca_file: %s, cert_file: %s, key_file: %s}", ca, cliCert, cliKey)))
	if err != nil {
		t.Fatalf("open over mutual TLS: %v", err)
	}
	defer connector.Close(c)
	if _, err := c.(connector.Creator).CreateAccount(t.Context(), connector.AccountSpec{Username: "ada"}); err != nil {
		t.Fatalf("CreateAccount over mutual TLS: %v", err)
	}
	_, err = connector.Open(t.Context(), remote.TypeName, config(fmt.Sprintf("{ca_file: %s}", ca)))
	// How the refused handshake surfaces (a TLS alert, a broken pipe) depends on timing.
	if err == nil || !strings.Contains(err.Error(), "asking "+p.addr) {
		t.Fatalf("open without a client certificate = %v, want it refused", err)
	}
}
