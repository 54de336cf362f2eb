// Package remote is the "grpc" connector type: a connector running in its own process,
// written in any language, that serves tenure.connector.v1.ConnectorService (for Go, see
// pkg/connector/plugin). The host uses it like a built-in connector: it implements exactly
// the capabilities the remote side reports, and its errors keep their kinds across the wire.
//
//	connectors:
//	  - name: inventory
//	    type: grpc
//	    config:
//	      address: inventory.internal:7400   # host:port, or unix:/path/to/socket
//	      tls:                               # the default: TLS with the system's roots
//	        ca_file: /etc/tenure/connector-ca.pem
//	        cert_file: /etc/tenure/tenure.pem # client certificate for mutual TLS
//	        key_file: /etc/tenure/tenure-key.pem
//	      token: {file: /run/secrets/inventory-token}
//	      timeout: 30s                       # per call
//
// insecure: true sends plaintext, and is accepted only for loopback addresses and unix
// sockets (a connector next to tenure on the same machine or pod).
//
// Opening asks the remote side which capabilities it has, waiting up to timeout for it to
// come up. List them under capabilities: to open without the remote side (tenure then starts
// even when the connector process is down, and calls fail as retryable until it is up).
package remote

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"os"
	"slices"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/tenure-dev/tenure/pkg/connector"
	"github.com/tenure-dev/tenure/pkg/connector/plugin"
)

// TypeName is the connector type operators write in the connectors file.
const TypeName = "grpc"

// DefaultTimeout bounds each call, and opening, when the config sets no timeout.
const DefaultTimeout = 30 * time.Second

func init() { connector.Register(TypeName, open) }

// Config is the "grpc" connector type's configuration.
type Config struct {
	// Address is host:port or unix:/path.
	Address string `yaml:"address"`
	// TLS configures the connection; it is used unless Insecure is set.
	TLS TLSConfig `yaml:"tls"`
	// Insecure sends plaintext; only for loopback addresses and unix sockets.
	Insecure bool `yaml:"insecure"`
	// Token is the bearer token the remote side expects.
	Token connector.Secret `yaml:"token"`
	// Timeout bounds each call (a Go duration: "30s", "2m"); default 30s.
	Timeout string `yaml:"timeout"`
	// Capabilities, when set, are used instead of asking the remote side at open.
	Capabilities []string `yaml:"capabilities"`
}

// TLSConfig is where the certificates are. All fields are optional: without CAFile the
// system's roots verify the server, and CertFile with KeyFile add a client certificate.
type TLSConfig struct {
	CAFile   string `yaml:"ca_file"`
	CertFile string `yaml:"cert_file"`
	KeyFile  string `yaml:"key_file"`
	// ServerName overrides the name checked in the server's certificate.
	ServerName string `yaml:"server_name"`
}

func (t TLSConfig) isZero() bool { return t == TLSConfig{} }

func open(ctx context.Context, decode func(any) error) (connector.Connector, error) {
	var cfg Config
	if err := decode(&cfg); err != nil {
		return nil, err
	}
	return Open(ctx, cfg)
}

// Open connects to the remote connector cfg describes. Every problem with cfg is reported at
// once, each naming its field.
func Open(ctx context.Context, cfg Config) (connector.Connector, error) {
	var errs []error
	bad := func(err error) { errs = append(errs, err) }

	local, err := checkAddress(cfg.Address)
	if err != nil {
		bad(err)
	}
	var creds credentials.TransportCredentials
	switch {
	case cfg.Insecure && !cfg.TLS.isZero():
		bad(errors.New("tls and insecure: set one, not both"))
	case cfg.Insecure:
		if err == nil && !local {
			bad(fmt.Errorf("insecure: address %q is not loopback; plaintext (and the bearer token in it) may only go to 127.0.0.1, ::1, localhost or a unix socket: configure tls instead", cfg.Address))
		}
		creds = insecure.NewCredentials()
	default:
		tlsCfg, tlsErrs := cfg.TLS.load()
		errs = append(errs, tlsErrs...)
		creds = credentials.NewTLS(tlsCfg)
	}
	var token string
	if cfg.Token.IsZero() {
		bad(errors.New("token is required (the remote side's bearer token; {env: NAME} or {file: PATH} keep it out of this file)"))
	} else if token, err = cfg.Token.Resolve(); err != nil {
		bad(fmt.Errorf("token: %w", err))
	}
	timeout := DefaultTimeout
	if cfg.Timeout != "" {
		d, err := time.ParseDuration(cfg.Timeout)
		switch {
		case err != nil:
			bad(fmt.Errorf("timeout: %q is not a duration such as 30s or 2m", cfg.Timeout))
		case d <= 0:
			bad(fmt.Errorf("timeout: %s must be positive", cfg.Timeout))
		default:
			timeout = d
		}
	}
	var clientOpts []plugin.ClientOption
	if cfg.Capabilities != nil {
		known := append([]string{"get"}, plugin.CapabilityNames()...)
		for _, c := range cfg.Capabilities {
			if !slices.Contains(known, c) {
				bad(fmt.Errorf("capabilities: unknown capability %q (known: %s)", c, strings.Join(known, ", ")))
			}
		}
		clientOpts = append(clientOpts, plugin.WithCapabilities(cfg.Capabilities...))
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}

	cc, err := grpc.NewClient(cfg.Address,
		grpc.WithTransportCredentials(creds),
		grpc.WithPerRPCCredentials(bearer{header: "Bearer " + token, overTLS: !cfg.Insecure}),
		grpc.WithUnaryInterceptor(callTimeout(timeout)),
	)
	if err != nil {
		return nil, fmt.Errorf("address %q: %w", cfg.Address, err)
	}
	openCtx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	c, err := plugin.NewClient(openCtx, cc, clientOpts...)
	if err != nil {
		cc.Close()
		return nil, fmt.Errorf("asking %s for its capabilities (list them under capabilities: to open without asking): %w", cfg.Address, err)
	}
	return c, nil
}

// checkAddress validates address and reports whether only this machine can reach it.
func checkAddress(address string) (local bool, err error) {
	if address == "" {
		return false, errors.New("address is required (host:port or unix:/path)")
	}
	if path, ok := strings.CutPrefix(address, "unix:"); ok {
		if strings.TrimLeft(path, "/") == "" {
			return false, fmt.Errorf("address %q: unix socket path is empty", address)
		}
		return true, nil
	}
	host, port, err := net.SplitHostPort(address)
	if err != nil || port == "" {
		return false, fmt.Errorf("address %q: want host:port or unix:/path", address)
	}
	if host == "localhost" {
		return true, nil
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback(), nil
}

// load reads the certificates; problems come back one per field.
func (t TLSConfig) load() (*tls.Config, []error) {
	cfg := &tls.Config{MinVersion: tls.VersionTLS12, ServerName: t.ServerName}
	var errs []error
	if t.CAFile != "" {
		pem, err := os.ReadFile(t.CAFile)
		switch {
		case err != nil:
			errs = append(errs, fmt.Errorf("tls.ca_file: %w", err))
		default:
			pool := x509.NewCertPool()
			if !pool.AppendCertsFromPEM(pem) {
				errs = append(errs, fmt.Errorf("tls.ca_file: %s holds no PEM certificate", t.CAFile))
			}
			cfg.RootCAs = pool
		}
	}
	switch {
	case t.CertFile != "" && t.KeyFile == "":
		errs = append(errs, errors.New("tls.key_file is required with tls.cert_file"))
	case t.KeyFile != "" && t.CertFile == "":
		errs = append(errs, errors.New("tls.cert_file is required with tls.key_file"))
	case t.CertFile != "":
		cert, err := tls.LoadX509KeyPair(t.CertFile, t.KeyFile)
		if err != nil {
			errs = append(errs, fmt.Errorf("tls.cert_file, tls.key_file: %w", err))
		}
		cfg.Certificates = []tls.Certificate{cert}
	}
	return cfg, errs
}

// bearer sends the token with every call.
type bearer struct {
	header  string
	overTLS bool
}

func (b bearer) GetRequestMetadata(context.Context, ...string) (map[string]string, error) {
	return map[string]string{"authorization": b.header}, nil
}

// RequireTransportSecurity makes gRPC refuse to send the token over plaintext unless the
// operator asked for plaintext, which Open allows only on loopback.
func (b bearer) RequireTransportSecurity() bool { return b.overTLS }

// callTimeout bounds each call; a caller's earlier deadline still wins.
func callTimeout(d time.Duration) grpc.UnaryClientInterceptor {
	return func(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
		ctx, cancel := context.WithTimeout(ctx, d)
		defer cancel()
		return invoker(ctx, method, req, reply, cc, opts...)
	}
}
