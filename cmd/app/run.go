package app

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.opentelemetry.io/contrib/instrumentation/google.golang.org/grpc/otelgrpc"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	"github.com/tenure-dev/tenure/pkg/authn"
	"github.com/tenure-dev/tenure/pkg/connector"
	// Built-in connector types register themselves.
	_ "github.com/tenure-dev/tenure/pkg/connectors/ldap"
	_ "github.com/tenure-dev/tenure/pkg/connectors/manual"
	_ "github.com/tenure-dev/tenure/pkg/connectors/pgrole"
	_ "github.com/tenure-dev/tenure/pkg/connectors/remote"
	_ "github.com/tenure-dev/tenure/pkg/connectors/scim"
	_ "github.com/tenure-dev/tenure/pkg/connectors/webhook"
	"github.com/tenure-dev/tenure/pkg/natsx"
	"github.com/tenure-dev/tenure/pkg/pgstore"
	"github.com/tenure-dev/tenure/services/approval"
	"github.com/tenure-dev/tenure/services/intake"
	"github.com/tenure-dev/tenure/services/ledger"
	"github.com/tenure-dev/tenure/services/ledger/ssf"
	"github.com/tenure-dev/tenure/services/provisioner"
)

// Options carry objects a caller built itself (tenure dev, tests) instead of files.
type Options struct {
	Log      *slog.Logger
	Auth     *authn.Authenticator
	Policy   *approval.Policy
	Targets  []provisioner.Target
	Sources  map[string]intake.SourceConfig
	ExtraRun []func(ctx context.Context) error
	// NATSUsers, when set, gives each service its own NATS connection as its own user
	// (keys: the service names, and "admin" for the streams), as separate processes would
	// have: `tenure dev` runs the services in one process with deploy/nats's permissions.
	NATSUsers map[string]NATSUser
}

// NATSUser is a NATS user name and password.
type NATSUser struct{ User, Password string }

// Stack is a running set of services with their HTTP and gRPC servers.
type Stack struct {
	Intake      *intake.Service
	Approval    *approval.Service
	Provisioner *provisioner.Service
	Ledger      *ledger.Service
	// SSF is the OpenID Shared Signals transmitter that runs with the ledger.
	SSF *ssf.Transmitter
	// HTTPAddr and GRPCAddr are the bound addresses (useful with port 0).
	HTTPAddr, GRPCAddr string
	NATS               *nats.Conn

	log    *slog.Logger
	conns  []*nats.Conn // every NATS connection, NATS among them
	pools  []*pgxpool.Pool
	grpc   *grpc.Server
	http   *http.Server
	cancel context.CancelFunc
	stop   sync.Once
	wg     sync.WaitGroup
	errMu  sync.Mutex
	err    error
	done   chan struct{}
}

type runner interface{ Run(context.Context) error }

type grpcService interface {
	RegisterGRPC(*grpc.Server)
	AuthRules() authn.Rules
}

// Start connects to NATS and PostgreSQL, builds the configured services, and starts serving.
// It fails fast, with a message naming what is unreachable, when a dependency is missing.
func Start(ctx context.Context, cfg *ServeConfig, o Options) (*Stack, error) {
	if err := cfg.Validate(); err != nil && (o.Auth == nil || !onlyFileProblems(err)) {
		return nil, err
	}
	log := o.Log
	if log == nil {
		log = slog.Default()
	}
	svcs, _ := cfg.Services()
	st := &Stack{log: log, done: make(chan struct{})}
	ok := false
	defer func() {
		if !ok {
			st.closeConns()
		}
	}()

	auth := o.Auth
	if auth == nil {
		a, err := authn.Load(cfg.TokensFile)
		if err != nil {
			return nil, err
		}
		auth = a
	}

	// NATS first: without it nothing works.
	dial := func(name, user, password string) (jetstream.JetStream, error) {
		nopts := []nats.Option{nats.Name(name), nats.Timeout(cfg.ConnectTimeout), nats.MaxReconnects(-1)}
		if user != "" {
			// Replies (PubAcks, API answers) come to a per-user inbox, so one service cannot
			// read another's replies (deploy/nats/accounts.conf).
			nopts = append(nopts, nats.UserInfo(user, password), nats.CustomInboxPrefix("_INBOX_"+user))
		}
		if cfg.NATSCAFile != "" {
			nopts = append(nopts, nats.RootCAs(cfg.NATSCAFile))
		}
		nc, err := nats.Connect(cfg.NATSURL, nopts...)
		if err != nil {
			return nil, fmt.Errorf("NATS at %s unreachable (as %q): %w", cfg.NATSURL, user, err)
		}
		st.conns = append(st.conns, nc)
		return jetstream.New(nc)
	}
	user, password := cfg.NATSUser, cfg.NATSPassword
	if o.NATSUsers != nil {
		user, password = o.NATSUsers["admin"].User, o.NATSUsers["admin"].Password
	}
	js, err := dial("tenure-"+strings.Join(svcs, "+"), user, password)
	if err != nil {
		return nil, err
	}
	st.NATS = js.Conn()
	nc := st.NATS
	// svcJS is the JetStream a service uses: its own user's when NATSUsers has one.
	svcJS := func(svc string) (jetstream.JetStream, error) {
		u, ok := o.NATSUsers[svc]
		if !ok {
			return js, nil
		}
		return dial("tenure-"+svc, u.User, u.Password)
	}
	sctx, cancel := context.WithTimeout(ctx, cfg.ConnectTimeout)
	defer cancel()
	if cfg.EnsureStreams {
		so := natsx.DefaultStreamOptions()
		so.Replicas = cfg.StreamReplicas
		if err := natsx.EnsureStreams(sctx, js, so); err != nil {
			return nil, err
		}
	} else if err := natsx.CheckStreams(sctx, js); err != nil {
		return nil, err
	}

	connect := func(svc string) (*pgxpool.Pool, error) {
		cctx, cancel := context.WithTimeout(ctx, cfg.ConnectTimeout)
		defer cancel()
		pool, err := pgstore.Connect(cctx, cfg.databaseURL(svc), svc)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", svc, err)
		}
		st.pools = append(st.pools, pool)
		return pool, nil
	}
	var runners []runner
	var grpcs []grpcService
	var ledgerPool *pgxpool.Pool
	var ledgerJS jetstream.JetStream
	for _, svc := range svcs {
		pool, err := connect(svc)
		if err != nil {
			return nil, err
		}
		js, err := svcJS(svc)
		if err != nil {
			return nil, err
		}
		slog := log
		switch svc {
		case "intake":
			var icfg intake.Config
			if o.Sources != nil {
				icfg.Sources = o.Sources
			} else if icfg, err = LoadSources(cfg.WebhookSources); err != nil {
				return nil, err
			}
			s, err := intake.New(ctx, icfg, intake.Deps{Pool: pool, JS: js, Log: slog, AtomicBatch: cfg.NATSAtomicBatch})
			if err != nil {
				return nil, fmt.Errorf("intake: %w", err)
			}
			st.Intake = s
			runners, grpcs = append(runners, s), append(grpcs, s)
		case "approval":
			// With a policy file, the service loads it and reloads it when it changes. With the
			// connectors file too, the policy must fit it: a system naming a connector that is
			// not configured, or an entitlement its connector does not define, fails the start.
			acfg := approval.Config{Policy: o.Policy, PolicyFile: cfg.Policy, Tick: cfg.ApprovalTick}
			if cfg.Connectors != "" {
				if acfg.Connectors, err = LoadConnectors(cfg.Connectors); err != nil {
					return nil, err
				}
			}
			s, err := approval.New(ctx, acfg, approval.Deps{Pool: pool, JS: js, Log: slog, AtomicBatch: cfg.NATSAtomicBatch})
			if err != nil {
				return nil, fmt.Errorf("approval: %w", err)
			}
			st.Approval = s
			runners, grpcs = append(runners, s), append(grpcs, s)
		case "provisioner":
			targets := o.Targets
			if targets == nil {
				if targets, err = OpenTargets(ctx, cfg.Connectors); err != nil {
					return nil, err
				}
			}
			s, err := provisioner.New(ctx, provisioner.Config{Targets: targets, CaseDeadline: cfg.CaseDeadline}, provisioner.Deps{Pool: pool, JS: js, Log: slog, AtomicBatch: cfg.NATSAtomicBatch})
			if err != nil {
				return nil, fmt.Errorf("provisioner: %w", err)
			}
			st.Provisioner = s
			runners, grpcs = append(runners, s), append(grpcs, s)
		case "ledger":
			s, err := ledger.New(ctx, ledger.Config{KeyFile: cfg.LedgerKeyFile, WriterRole: cfg.LedgerWriterRole, WitnessDir: cfg.LedgerWitnessDir}, ledger.Deps{Pool: pool, JS: js, Log: slog, AtomicBatch: cfg.NATSAtomicBatch})
			if err != nil {
				return nil, fmt.Errorf("ledger: %w", err)
			}
			st.Ledger, ledgerPool, ledgerJS = s, pool, js
			runners, grpcs = append(runners, s), append(grpcs, s)
		}
	}

	rules := authn.Rules{}
	for _, g := range grpcs {
		for m, r := range g.AuthRules() {
			rules[m] = r
		}
	}
	gopts := []grpc.ServerOption{
		grpc.StatsHandler(otelgrpc.NewServerHandler()),
		grpc.ChainUnaryInterceptor(auth.UnaryInterceptor(rules)),
		grpc.ChainStreamInterceptor(auth.StreamInterceptor(rules)),
	}
	if cfg.GRPCTLSCert != "" {
		cert, err := tls.LoadX509KeyPair(cfg.GRPCTLSCert, cfg.GRPCTLSKey)
		if err != nil {
			return nil, fmt.Errorf("gRPC TLS: %w", err)
		}
		gopts = append(gopts, grpc.Creds(credentials.NewTLS(&tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12})))
	}
	st.grpc = grpc.NewServer(gopts...)
	for _, g := range grpcs {
		g.RegisterGRPC(st.grpc)
	}
	gl, err := net.Listen("tcp", cfg.GRPCAddr)
	if err != nil {
		return nil, fmt.Errorf("gRPC listen %s: %w", cfg.GRPCAddr, err)
	}
	hl, err := net.Listen("tcp", cfg.HTTPAddr)
	if err != nil {
		gl.Close()
		return nil, fmt.Errorf("HTTP listen %s: %w", cfg.HTTPAddr, err)
	}
	st.GRPCAddr, st.HTTPAddr = gl.Addr().String(), hl.Addr().String()

	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) { w.Write([]byte("ok\n")) })
	mux.HandleFunc("GET /readyz", st.ready)
	if st.Intake != nil {
		mux.Handle("/webhooks/", st.Intake.Handler())
		mux.Handle("/snapshots/", st.Intake.Handler())
	}
	if st.Ledger != nil {
		t, err := startSSF(ctx, cfg, ledgerPool, ledgerJS, auth, log, st.HTTPAddr, mux)
		if err != nil {
			gl.Close()
			hl.Close()
			return nil, fmt.Errorf("ssf: %w", err)
		}
		st.SSF = t
		runners = append(runners, t)
	}
	st.http = &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second, ReadTimeout: 30 * time.Second, WriteTimeout: 30 * time.Second}

	rctx, rcancel := context.WithCancel(context.WithoutCancel(ctx))
	st.cancel = rcancel
	for _, r := range runners {
		st.goRun(func() error { return r.Run(rctx) })
	}
	for _, f := range o.ExtraRun {
		st.goRun(func() error { return f(rctx) })
	}
	go func() {
		if err := st.grpc.Serve(gl); err != nil {
			st.setErr(fmt.Errorf("gRPC: %w", err))
		}
	}()
	go func() {
		if err := st.http.Serve(hl); err != nil && !errors.Is(err, http.ErrServerClosed) {
			st.setErr(fmt.Errorf("HTTP: %w", err))
		}
	}()
	go func() {
		<-ctx.Done()
		st.Stop()
	}()
	ok = true
	log.Info("tenure serving", "services", strings.Join(svcs, ","), "http", st.HTTPAddr, "grpc", st.GRPCAddr, "nats", nc.ConnectedUrlRedacted())
	return st, nil
}

// SetupDatabase creates, as a database admin, the per-service roles and schemas, and
// migrates the ledger (and its SSF transmitter's schema) as the owner of its schema so the
// ledger's own role may only INSERT and SELECT entries. passwords maps a service to its
// role's password (optional). `tenure setup` and `tenure dev` run it; it is idempotent.
func SetupDatabase(ctx context.Context, adminURL string, passwords map[string]string) error {
	if err := pgstore.Bootstrap(ctx, adminURL, []string{"intake", "approval", "provisioner"}, passwords); err != nil {
		return err
	}
	if err := pgstore.BootstrapSplit(ctx, adminURL, "ledger", passwords["ledger"]); err != nil {
		return err
	}
	owner, err := pgstore.Connect(ctx, pgstore.AsRole(adminURL, pgstore.OwnerRoleName("ledger")), "ledger")
	if err != nil {
		return fmt.Errorf("ledger owner: %w", err)
	}
	defer owner.Close()
	if err := ledger.Setup(ctx, owner, pgstore.RoleName("ledger")); err != nil {
		return err
	}
	return setupSSFDatabase(ctx, adminURL, owner)
}

// onlyFileProblems lets in-process callers (tenure dev, tests) pass objects instead of files.
func onlyFileProblems(err error) bool {
	for _, p := range strings.Split(err.Error(), "; ") {
		if !strings.Contains(p, "needs --") && !strings.Contains(p, "--tokens-file") {
			return false
		}
	}
	return true
}

func (st *Stack) goRun(f func() error) {
	st.wg.Add(1)
	go func() {
		defer st.wg.Done()
		if err := f(); err != nil {
			st.setErr(err)
		}
	}()
}

func (st *Stack) setErr(err error) {
	st.errMu.Lock()
	defer st.errMu.Unlock()
	if st.err == nil {
		st.err = err
		st.log.Error("service stopped", "err", err)
	}
}

func (st *Stack) ready(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := context.WithTimeout(r.Context(), 2*time.Second)
	defer cancel()
	var probs []string
	for _, nc := range st.conns {
		if !nc.IsConnected() {
			probs = append(probs, "NATS disconnected")
			break
		}
	}
	for _, p := range st.pools {
		if err := p.Ping(ctx); err != nil {
			probs = append(probs, "database: "+err.Error())
		}
	}
	if st.Ledger != nil {
		if err := st.Ledger.Ready(); err != nil {
			probs = append(probs, err.Error())
		}
	}
	if len(probs) > 0 {
		http.Error(w, strings.Join(probs, "; "), http.StatusServiceUnavailable)
		return
	}
	w.Write([]byte("ready\n"))
}

// Stop shuts the servers down gracefully, stops the services and closes connections. It is
// safe to call more than once and from several goroutines.
func (st *Stack) Stop() {
	st.stop.Do(st.shutdown)
	<-st.done
}

func (st *Stack) shutdown() {
	defer close(st.done)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if st.http != nil {
		st.http.Shutdown(ctx)
	}
	if st.grpc != nil {
		stopped := make(chan struct{})
		go func() { st.grpc.GracefulStop(); close(stopped) }()
		select {
		case <-stopped:
		case <-ctx.Done():
			st.grpc.Stop()
		}
	}
	if st.cancel != nil {
		st.cancel()
	}
	st.wg.Wait()
	st.closeConns()
}

func (st *Stack) closeConns() {
	for _, p := range st.pools {
		p.Close()
	}
	for _, nc := range st.conns {
		nc.Drain()
	}
}

// Wait blocks until the stack has stopped and returns the first service error.
func (st *Stack) Wait() error {
	<-st.done
	st.errMu.Lock()
	defer st.errMu.Unlock()
	return st.err
}

// OpenTargets opens every connector of the connectors files (one, or a comma list).
func OpenTargets(ctx context.Context, paths string) ([]provisioner.Target, error) {
	cfgs, err := LoadConnectors(paths)
	if err != nil {
		return nil, err
	}
	var out []provisioner.Target
	for i := range cfgs {
		c := &cfgs[i]
		conn, err := c.Open(ctx)
		if err != nil {
			for _, t := range out {
				connector.Close(t.Conn)
			}
			return nil, err
		}
		sys := c.System
		if sys == "" {
			sys = c.Name
		}
		out = append(out, provisioner.Target{Name: c.Name, Type: c.Type, System: sys, Conn: conn, Policy: c.Policy})
	}
	return out, nil
}
