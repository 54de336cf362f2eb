// Command connector-inventory is an example tenure connector that runs in its own process:
// it manages the accounts of a small application kept in a JSON file and serves them to
// tenure over gRPC (tenure.connector.v1.ConnectorService). Copy it to start a connector of
// your own: replace inventory.go and store.go with calls to your target, keep main.go.
//
//	INVENTORY_TOKEN=... connector-inventory -listen 127.0.0.1:7400 -data inventory.json
//
// and in tenure's connectors file:
//
//	connectors:
//	  - name: inventory
//	    type: grpc
//	    config:
//	      address: 127.0.0.1:7400
//	      insecure: true            # loopback only; use tls: otherwise
//	      token: {env: INVENTORY_TOKEN}
package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/tenure-dev/tenure/pkg/connector"
	"github.com/tenure-dev/tenure/pkg/connector/plugin"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := realMain(ctx, os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "connector-inventory:", err)
		os.Exit(1)
	}
}

func realMain(ctx context.Context, args []string) error {
	fl := flag.NewFlagSet("connector-inventory", flag.ContinueOnError)
	listen := fl.String("listen", "127.0.0.1:7400", "`address` to serve on (port 0 picks a free one)")
	data := fl.String("data", "inventory.json", "the inventory `file`, created on the first change")
	entitlements := fl.String("entitlements", "reports,billing", "comma-separated `names` of the entitlements this inventory manages")
	pageSize := fl.Int("page-size", 100, "accounts per ListAccounts page")
	tokenFile := fl.String("token-file", "", "`file` holding the bearer token tenure sends (default: $INVENTORY_TOKEN)")
	certFile := fl.String("tls-cert", "", "serve TLS with this certificate `file` (PEM)")
	keyFile := fl.String("tls-key", "", "the TLS certificate's key `file` (PEM)")
	clientCA := fl.String("tls-client-ca", "", "require client certificates signed by this CA `file` (mutual TLS)")
	if err := fl.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil
		}
		return err
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, nil))

	// The SDK's Secret gives the same env/file handling and redaction as tenure's own config.
	tokenSecret := connector.SecretEnv("INVENTORY_TOKEN")
	if *tokenFile != "" {
		tokenSecret = connector.SecretFile(*tokenFile)
	}
	token, err := tokenSecret.Resolve()
	if err != nil {
		return fmt.Errorf("bearer token (-token-file or $INVENTORY_TOKEN): %w", err)
	}
	inv, err := NewInventory(*data, strings.Split(*entitlements, ","), *pageSize)
	if err != nil {
		return err
	}
	opts := []plugin.Option{plugin.WithToken(token), plugin.WithLogger(log)}
	if *certFile != "" || *keyFile != "" || *clientCA != "" {
		cfg, err := serverTLS(*certFile, *keyFile, *clientCA)
		if err != nil {
			return err
		}
		opts = append(opts, plugin.WithTLS(cfg))
	}

	lis, err := net.Listen("tcp", *listen)
	if err != nil {
		return err
	}
	log.Info("serving connector", "addr", lis.Addr().String(), "data", *data, "capabilities", connector.Capabilities(inv))
	if err := plugin.Serve(ctx, lis, inv, opts...); err != nil {
		return err
	}
	log.Info("stopped")
	return nil
}

// serverTLS builds the server's TLS configuration, with mutual TLS when clientCA is set.
func serverTLS(certFile, keyFile, clientCA string) (*tls.Config, error) {
	if certFile == "" || keyFile == "" {
		return nil, errors.New("-tls-cert and -tls-key go together")
	}
	cert, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		return nil, fmt.Errorf("-tls-cert/-tls-key: %w", err)
	}
	cfg := &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
	if clientCA != "" {
		pem, err := os.ReadFile(clientCA)
		if err != nil {
			return nil, fmt.Errorf("-tls-client-ca: %w", err)
		}
		cfg.ClientCAs = x509.NewCertPool()
		if !cfg.ClientCAs.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("-tls-client-ca: %s holds no PEM certificate", clientCA)
		}
		cfg.ClientAuth = tls.RequireAndVerifyClientCert
	}
	return cfg, nil
}
