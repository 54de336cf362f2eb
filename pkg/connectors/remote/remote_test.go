package remote_test

import (
	"context"
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
	"strings"
	"testing"
	"time"

	"github.com/tenure-dev/tenure/pkg/connector"
	"github.com/tenure-dev/tenure/pkg/connector/connectortest"
	"github.com/tenure-dev/tenure/pkg/connector/plugin"
	"github.com/tenure-dev/tenure/pkg/connectors/remote"
)

const token = "remote-test-token-5f1c"

// serve runs a remote connector for c on a loopback port until the test ends.
func serve(t *testing.T, c connector.Connector, opts ...plugin.Option) string {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- plugin.Serve(ctx, lis, c, append([]plugin.Option{plugin.WithToken(token)}, opts...)...)
	}()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	return lis.Addr().String()
}

func open(t *testing.T, config string) (connector.Connector, error) {
	t.Helper()
	c, err := connector.Open(t.Context(), remote.TypeName, []byte(config))
	if err == nil {
		t.Cleanup(func() { connector.Close(c) })
	}
	return c, err
}

// pki is a throwaway CA with a server certificate for 127.0.0.1 and a client certificate.
type pki struct {
	dir                   string
	ca                    *x509.CertPool
	caFile                string
	serverCert            tls.Certificate
	clientCert, clientKey string
}

func newPKI(t *testing.T) *pki {
	t.Helper()
	dir := t.TempDir()
	caKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	caTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "test connector CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	caCert, _ := x509.ParseCertificate(caDER)
	p := &pki{dir: dir, ca: x509.NewCertPool(), caFile: filepath.Join(dir, "ca.pem")}
	p.ca.AddCert(caCert)
	writePEM(t, p.caFile, "CERTIFICATE", caDER)

	issue := func(serial int64, usage x509.ExtKeyUsage, ips []net.IP) ([]byte, *ecdsa.PrivateKey) {
		key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		tmpl := &x509.Certificate{
			SerialNumber: big.NewInt(serial), Subject: pkix.Name{CommonName: fmt.Sprintf("leaf %d", serial)},
			NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
			KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{usage}, IPAddresses: ips,
		}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, caCert, &key.PublicKey, caKey)
		if err != nil {
			t.Fatal(err)
		}
		return der, key
	}
	srvDER, srvKey := issue(2, x509.ExtKeyUsageServerAuth, []net.IP{net.IPv4(127, 0, 0, 1)})
	p.serverCert = tls.Certificate{Certificate: [][]byte{srvDER}, PrivateKey: srvKey}
	cliDER, cliKey := issue(3, x509.ExtKeyUsageClientAuth, nil)
	p.clientCert, p.clientKey = filepath.Join(dir, "client.pem"), filepath.Join(dir, "client-key.pem")
	writePEM(t, p.clientCert, "CERTIFICATE", cliDER)
	keyDER, _ := x509.MarshalECPrivateKey(cliKey)
	writePEM(t, p.clientKey, "EC PRIVATE KEY", keyDER)
	return p
}

func writePEM(t *testing.T, path, typ string, der []byte) {
	t.Helper()
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
}

// serverTLS requires a client certificate from p's CA: mutual TLS.
func (p *pki) serverTLS() *tls.Config {
	return &tls.Config{
		Certificates: []tls.Certificate{p.serverCert},
		ClientCAs:    p.ca,
		ClientAuth:   tls.RequireAndVerifyClientCert,
		MinVersion:   tls.VersionTLS12,
	}
}

func TestConformanceOverMutualTLS(t *testing.T) {
	p := newPKI(t)
	t.Setenv("REMOTE_TEST_TOKEN", token)
	connectortest.Run(t, connectortest.Harness{
		New: func(t *testing.T) connector.Connector {
			m := connectortest.NewMemory("read", "write")
			m.PageSize = 2
			addr := serve(t, m, plugin.WithTLS(p.serverTLS()))
			c, err := connector.Open(t.Context(), remote.TypeName, fmt.Appendf(nil, `
address: %s
tls:
  ca_file: %s
  cert_file: %s
  key_file: %s
token: {env: REMOTE_TEST_TOKEN}
timeout: 10s
`, addr, p.caFile, p.clientCert, p.clientKey))
			if err != nil {
				t.Fatal(err)
			}
			return c
		},
		Features: connectortest.Features{
			Create: true, Disable: true, Enable: true, Delete: true,
			Entitlements: true, Sessions: true, List: true, Credentials: true, Profile: true,
		},
		Entitlements: []string{"read", "write"},
	})
}

// Without its client certificate tenure cannot reach a mutual-TLS connector, and says whom
// it was asking.
func TestMutualTLSNeedsTheClientCertificate(t *testing.T) {
	p := newPKI(t)
	addr := serve(t, connectortest.NewMemory(), plugin.WithTLS(p.serverTLS()))
	_, err := open(t, fmt.Sprintf("address: %s\ntls: {ca_file: %s}\ntoken: %s\ntimeout: 1s\n", addr, p.caFile, token))
	if err == nil || !strings.Contains(err.Error(), "asking "+addr+" for its capabilities") {
		t.Fatalf("open without a client certificate = %v, want an error naming %s", err, addr)
	}
}

// A client that does not trust the server's CA refuses it.
func TestTLSVerifiesTheServer(t *testing.T) {
	p, other := newPKI(t), newPKI(t)
	addr := serve(t, connectortest.NewMemory(), plugin.WithTLS(p.serverTLS()))
	_, err := open(t, fmt.Sprintf("address: %s\ntls: {ca_file: %s, cert_file: %s, key_file: %s}\ntoken: %s\ntimeout: 1s\n",
		addr, other.caFile, p.clientCert, p.clientKey, token))
	if err == nil {
		t.Fatal("open trusted a server certificate from an unknown CA")
	}
}

func TestInsecureLoopbackReportsRemoteCapabilities(t *testing.T) {
	addr := serve(t, readOnlyLister{connectortest.NewMemory()})
	c, err := open(t, fmt.Sprintf("address: %s\ninsecure: true\ntoken: %s\n", addr, token))
	if err != nil {
		t.Fatal(err)
	}
	if got, want := connector.Capabilities(c), []string{"get", connector.CapList}; !slices.Equal(got, want) {
		t.Fatalf("Capabilities = %v, want %v (what the remote side has)", got, want)
	}
	if _, ok := c.(connector.Disabler); ok {
		t.Fatal("the client claims Disabler although the remote side has no disable")
	}
	accs, next, err := c.(connector.Lister).ListAccounts(t.Context(), "")
	if err != nil || len(accs) != 0 || next != "" {
		t.Fatalf("ListAccounts = %v, %q, %v; want an empty last page", accs, next, err)
	}
}

// readOnlyLister can only read and list.
type readOnlyLister struct{ m *connectortest.Memory }

func (r readOnlyLister) GetAccount(ctx context.Context, ref connector.AccountRef) (connector.Account, error) {
	return r.m.GetAccount(ctx, ref)
}

func (r readOnlyLister) ListAccounts(ctx context.Context, token string) ([]connector.Account, string, error) {
	return r.m.ListAccounts(ctx, token)
}

// With capabilities declared, tenure opens the connector while its process is down; calls
// fail as retryable, naming the address, until it is up.
func TestDeclaredCapabilitiesOpenWithoutTheServer(t *testing.T) {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := lis.Addr().String()
	lis.Close() // nothing listens there now
	c, err := open(t, fmt.Sprintf("address: %s\ninsecure: true\ntoken: %s\ntimeout: 2s\ncapabilities: [disable, list]\n", addr, token))
	if err != nil {
		t.Fatalf("open with declared capabilities: %v", err)
	}
	if got, want := connector.Capabilities(c), []string{"get", connector.CapDisable, connector.CapList}; !slices.Equal(got, want) {
		t.Fatalf("Capabilities = %v, want %v", got, want)
	}
	err = c.(connector.Disabler).DisableAccount(t.Context(), connector.AccountRef{Username: "ada"})
	if err == nil || connector.KindOf(err) != connector.KindRetryable || !strings.Contains(err.Error(), addr) {
		t.Fatalf("DisableAccount with the connector down = %v (%v), want a retryable error naming %s", err, connector.KindOf(err), addr)
	}
}

func TestWrongTokenIsPermanentAndNotEchoed(t *testing.T) {
	addr := serve(t, connectortest.NewMemory())
	const wrong = "wrong-token-8d2e7a"
	_, err := open(t, fmt.Sprintf("address: %s\ninsecure: true\ntoken: %s\ntimeout: 2s\n", addr, wrong))
	if err == nil || connector.KindOf(err) != connector.KindPermanent || !strings.Contains(err.Error(), "wrong bearer token") {
		t.Fatalf("open with a wrong token = %v, want a permanent error saying the token is wrong", err)
	}
	if strings.Contains(err.Error(), wrong) || strings.Contains(err.Error(), token) {
		t.Fatalf("error %q reveals a token", err)
	}
}

// The per-call timeout bounds a call the remote side never answers.
func TestTimeoutBoundsEachCall(t *testing.T) {
	m := connectortest.NewMemory()
	release := make(chan struct{})
	m.Inject = func(op string, _ connector.AccountRef) error {
		if op == connector.CapDisable {
			<-release
		}
		return nil
	}
	addr := serve(t, m)
	c, err := open(t, fmt.Sprintf("address: %s\ninsecure: true\ntoken: %s\ntimeout: 200ms\n", addr, token))
	if err != nil {
		t.Fatal(err)
	}
	defer close(release)
	start := time.Now()
	err = c.(connector.Disabler).DisableAccount(t.Context(), connector.AccountRef{Username: "ada"})
	if connector.KindOf(err) != connector.KindRetryable || !strings.Contains(err.Error(), "DeadlineExceeded") {
		t.Fatalf("DisableAccount past the timeout = %v, want a retryable DeadlineExceeded", err)
	}
	if took := time.Since(start); took > 5*time.Second {
		t.Fatalf("DisableAccount took %v with a 200ms timeout", took)
	}
}

func TestBadConfig(t *testing.T) {
	dir := t.TempDir()
	notPEM := filepath.Join(dir, "not.pem")
	if err := os.WriteFile(notPEM, []byte("hello"), 0o600); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name, config string
		want         []string // each must appear in the error
	}{
		{"empty", "", []string{"address is required", "token is required"}},
		{"unknown field", "address: 127.0.0.1:7400\ninsecure: true\ntoken: x\nadress: typo\n", []string{`line 4: unknown field "adress"`}},
		{"wrong type", "address: 127.0.0.1:7400\ninsecure: maybe\ntoken: x\n", []string{"line 2", "maybe"}},
		{"address without port", "address: inventory.internal\ntoken: x\n", []string{`address "inventory.internal": want host:port or unix:/path`}},
		{"empty unix path", "address: 'unix:'\ninsecure: true\ntoken: x\n", []string{"unix socket path is empty"}},
		{"insecure off loopback", "address: 10.0.0.7:7400\ninsecure: true\ntoken: x\n", []string{`insecure: address "10.0.0.7:7400" is not loopback`}},
		{"insecure off loopback by name", "address: inventory.internal:7400\ninsecure: true\ntoken: x\n", []string{"insecure:", "not loopback"}},
		{"tls and insecure", "address: 127.0.0.1:7400\ninsecure: true\ntls: {ca_file: /x}\ntoken: x\n", []string{"tls and insecure"}},
		{"missing ca file", "address: h:1\ntls: {ca_file: " + filepath.Join(dir, "nope.pem") + "}\ntoken: x\n", []string{"tls.ca_file:", "nope.pem"}},
		{"ca file without PEM", "address: h:1\ntls: {ca_file: " + notPEM + "}\ntoken: x\n", []string{"tls.ca_file:", "holds no PEM certificate"}},
		{"cert without key", "address: h:1\ntls: {cert_file: /c.pem}\ntoken: x\n", []string{"tls.key_file is required with tls.cert_file"}},
		{"key without cert", "address: h:1\ntls: {key_file: /k.pem}\ntoken: x\n", []string{"tls.cert_file is required with tls.key_file"}},
		{"unreadable key pair", "address: h:1\ntls: {cert_file: " + notPEM + ", key_file: " + notPEM + "}\ntoken: x\n", []string{"tls.cert_file, tls.key_file:"}},
		{"token env unset", "address: h:1\ntoken: {env: REMOTE_TEST_UNSET_TOKEN}\n", []string{"token: secret: environment variable REMOTE_TEST_UNSET_TOKEN is not set"}},
		{"token with two sources", "address: h:1\ntoken: {env: A, file: B}\n", []string{"secret needs exactly one of value, env, file"}},
		{"bad timeout", "address: h:1\ntoken: x\ntimeout: soon\n", []string{`timeout: "soon" is not a duration`}},
		{"negative timeout", "address: h:1\ntoken: x\ntimeout: -5s\n", []string{"timeout: -5s must be positive"}},
		{"unknown capability", "address: h:1\ntoken: x\ncapabilities: [disable, teleport]\n", []string{`capabilities: unknown capability "teleport"`}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := open(t, tt.config)
			if err == nil {
				t.Fatal("open succeeded, want an error")
			}
			if !strings.Contains(err.Error(), `connector type "grpc"`) {
				t.Errorf("error %q does not name the connector type", err)
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not mention %q", err, w)
				}
			}
		})
	}
}

// An operator's connectors file with a remote connector opens through the registry.
func TestConnectorsFile(t *testing.T) {
	addr := serve(t, connectortest.NewMemory())
	cfgs, err := connector.ParseConfigs(fmt.Appendf(nil, `
connectors:
  - name: inventory
    type: grpc
    config:
      address: %s
      insecure: true
      token: %s
`, addr, token))
	if err != nil {
		t.Fatal(err)
	}
	c, err := cfgs[0].Open(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	defer connector.Close(c)
	_, err = c.GetAccount(t.Context(), connector.AccountRef{Username: "nobody"})
	if !errors.Is(err, connector.ErrNotFound) {
		t.Fatalf("GetAccount of nobody = %v, want ErrNotFound", err)
	}
}

// A connector next to tenure can listen on a unix socket, where plaintext is allowed.
func TestUnixSocket(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "c.sock")
	lis, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- plugin.Serve(ctx, lis, connectortest.NewMemory(), plugin.WithToken(token)) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
	}()
	c, err := open(t, fmt.Sprintf("address: unix:%s\ninsecure: true\ntoken: %s\ntimeout: 5s\n", sock, token))
	if err != nil {
		t.Fatal(err)
	}
	acc, err := c.(connector.Creator).CreateAccount(t.Context(), connector.AccountSpec{Username: "ada"})
	if err != nil || acc.State != connector.StateEnabled {
		t.Fatalf("CreateAccount over a unix socket = %+v, %v", acc, err)
	}
}
