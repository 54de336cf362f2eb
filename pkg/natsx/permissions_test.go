package natsx_test

// Checks deploy/nats/{nats.conf,cluster.conf,accounts.conf}: the per-service NATS users and
// their least-privilege permissions, loaded into a real embedded nats-server.

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
	"log/slog"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"golang.org/x/crypto/bcrypt"

	"github.com/tenure-dev/tenure/pkg/natsx"
)

// permUsers are the users of deploy/nats/accounts.conf; their passwords come from the
// environment variable NATS_<USER>_PASSWORD.
var permUsers = []string{"admin", "intake", "approval", "provisioner", "ledger", "security", "auditor"}

func permPassword(user string) string { return "test-" + user + "-password" }

func permSetPasswords(t *testing.T) {
	for _, u := range permUsers {
		t.Setenv("NATS_"+strings.ToUpper(u)+"_PASSWORD", permPassword(u))
	}
}

func permDeployFile(t *testing.T, name string) string {
	t.Helper()
	p, err := filepath.Abs(filepath.Join("..", "..", "deploy", "nats", name))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(p); err != nil {
		t.Fatalf("deploy config: %v", err)
	}
	return p
}

// permLoad parses a config file and checks the durability settings it must keep.
func permLoad(t *testing.T, path string) *server.Options {
	t.Helper()
	opts, err := server.ProcessConfigFile(path)
	if err != nil {
		t.Fatalf("load %s: %v", path, err)
	}
	if !opts.JetStream {
		t.Errorf("%s: JetStream is not enabled", path)
	}
	if !opts.SyncAlways {
		t.Errorf("%s: jetstream.sync_interval must be 'always' (acknowledged writes must be on disk)", path)
	}
	return opts
}

func permStart(t *testing.T, opts *server.Options) *server.Server {
	t.Helper()
	opts.Host = "127.0.0.1"
	opts.Port = -1
	opts.HTTPPort = 0
	opts.StoreDir = t.TempDir()
	opts.NoSigs = true
	opts.PidFile = ""
	opts.NoLog = os.Getenv("PERM_LOG") == ""
	ns, err := server.NewServer(opts)
	if err != nil {
		t.Fatal(err)
	}
	if !opts.NoLog {
		ns.ConfigureLogger()
	}
	go ns.Start()
	if !ns.ReadyForConnections(10 * time.Second) {
		ns.Shutdown()
		t.Fatal("nats-server not ready")
	}
	t.Cleanup(func() { ns.Shutdown(); ns.WaitForShutdown() })
	return ns
}

// permClient is one user's connection. Asynchronous errors (permission violations) land in errs.
type permClient struct {
	user string
	nc   *nats.Conn
	js   jetstream.JetStream
	errs chan error
}

func permConnect(t *testing.T, url, user string, extra ...nats.Option) *permClient {
	t.Helper()
	c := &permClient{user: user, errs: make(chan error, 128)}
	opts := append([]nats.Option{
		nats.Name("permissions-test-" + user),
		nats.UserInfo(user, permPassword(user)),
		// Every user has a private inbox prefix (see accounts.conf).
		nats.CustomInboxPrefix("_INBOX_" + user),
		nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) {
			select {
			case c.errs <- err:
			default:
			}
		}),
	}, extra...)
	nc, err := nats.Connect(url, opts...)
	if err != nil {
		t.Fatalf("connect as %s: %v", user, err)
	}
	t.Cleanup(nc.Close)
	c.nc = nc
	if c.js, err = jetstream.New(nc); err != nil {
		t.Fatal(err)
	}
	return c
}

func (c *permClient) drainErrs() {
	for {
		select {
		case <-c.errs:
		default:
			return
		}
	}
}

// denied runs op, which must not succeed, and waits for the server's permissions violation
// naming subject.
func (c *permClient) denied(t *testing.T, subject string, op func(ctx context.Context) error) {
	t.Helper()
	c.drainErrs()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- op(ctx) }()
	for {
		select {
		case err := <-c.errs:
			if errors.Is(err, nats.ErrPermissionViolation) && strings.Contains(err.Error(), `"`+subject+`"`) {
				cancel()
				<-done
				return
			}
			t.Logf("%s: other async error: %v", c.user, err)
		case err := <-done:
			done = nil
			if err == nil {
				t.Errorf("%s: %s was allowed; want a permissions violation", c.user, subject)
				return
			}
		case <-ctx.Done():
			t.Errorf("%s: no permissions violation for %s", c.user, subject)
			return
		}
	}
}

// subDenied checks that a plain subscription is refused.
func (c *permClient) subDenied(t *testing.T, subject string) {
	t.Helper()
	c.drainErrs()
	sub, err := c.nc.SubscribeSync(subject)
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Unsubscribe()
	_ = c.nc.Flush()
	timeout := time.After(5 * time.Second)
	for {
		select {
		case err := <-c.errs:
			if errors.Is(err, nats.ErrPermissionViolation) && strings.Contains(err.Error(), "Subscription to \""+subject+"\"") {
				return
			}
		case <-timeout:
			t.Errorf("%s: subscription to %s was not refused", c.user, subject)
			return
		}
	}
}

func (c *permClient) publish(t *testing.T, subject string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	ack, err := c.js.PublishMsg(ctx, &nats.Msg{Subject: subject, Data: []byte(`{}`)}, jetstream.WithMsgID(c.user+":"+subject))
	if err != nil {
		t.Errorf("%s: publish %s: %v", c.user, subject, err)
		return
	}
	if ack.Stream == "" || ack.Sequence == 0 {
		t.Errorf("%s: publish %s: bad PubAck %+v", c.user, subject, ack)
	}
}

func permPublishOp(c *permClient, subject string) func(context.Context) error {
	return func(ctx context.Context) error {
		_, err := c.js.Publish(ctx, subject, []byte(`{}`))
		return err
	}
}

func permCreateConsumerOp(c *permClient, cfg jetstream.ConsumerConfig) func(context.Context) error {
	return func(ctx context.Context) error {
		_, err := c.js.CreateOrUpdateConsumer(ctx, natsx.EventsStream, cfg)
		return err
	}
}

func permRequestOp(c *permClient, subject, body string) func(context.Context) error {
	return func(ctx context.Context) error {
		_, err := c.nc.RequestWithContext(ctx, subject, []byte(body))
		return err
	}
}

func permSpec(durable string, filters ...string) jetstream.ConsumerConfig {
	return natsx.ConsumerSpec{Durable: durable, FilterSubjects: filters}.Config()
}

func permConsumer(t *testing.T, c *permClient, cfg jetstream.ConsumerConfig) jetstream.Consumer {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	cons, err := c.js.CreateOrUpdateConsumer(ctx, natsx.EventsStream, cfg)
	if err != nil {
		t.Fatalf("%s: create consumer %s: %v", c.user, cfg.Durable, err)
	}
	// Look it up again by name: CONSUMER.INFO.
	if _, err := c.js.Consumer(ctx, natsx.EventsStream, cfg.Durable); err != nil {
		t.Fatalf("%s: consumer info %s: %v", c.user, cfg.Durable, err)
	}
	return cons
}

// permFetchAll pulls what is pending, acks each message with a confirmed ack, and returns the
// subjects.
func permFetchAll(t *testing.T, c *permClient, cons jetstream.Consumer) []string {
	t.Helper()
	batch, err := cons.FetchNoWait(100)
	if err != nil {
		t.Fatalf("%s: fetch: %v", c.user, err)
	}
	var subjects []string
	for msg := range batch.Messages() {
		subjects = append(subjects, msg.Subject())
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		if err := msg.DoubleAck(ctx); err != nil {
			t.Errorf("%s: ack %s: %v", c.user, msg.Subject(), err)
		}
		cancel()
	}
	if err := batch.Error(); err != nil && !errors.Is(err, nats.ErrTimeout) {
		t.Errorf("%s: fetch: %v", c.user, err)
	}
	return subjects
}

func permWantSubjects(t *testing.T, who string, got []string, want ...string) {
	t.Helper()
	for _, w := range want {
		if !slices.Contains(got, w) {
			t.Errorf("%s: got %v, missing %s", who, got, w)
		}
	}
}

func TestNATSPermissions(t *testing.T) {
	permSetPasswords(t)
	opts := permLoad(t, permDeployFile(t, "nats.conf"))
	ns := permStart(t, opts)
	url := ns.ClientURL()
	ctx := context.Background()

	c := map[string]*permClient{}
	for _, u := range permUsers {
		c[u] = permConnect(t, url, u)
	}
	admin, intake, approval, provisioner, ledger, security := c["admin"], c["intake"], c["approval"], c["provisioner"], c["ledger"], c["security"]

	t.Run("wrong password is refused", func(t *testing.T) {
		_, err := nats.Connect(url, nats.UserInfo("intake", "not-the-password"))
		if err == nil {
			t.Fatal("connected with a wrong password")
		}
	})

	t.Run("admin creates the streams", func(t *testing.T) {
		if err := natsx.EnsureStreams(ctx, admin.js, natsx.DefaultStreamOptions()); err != nil {
			t.Fatal(err)
		}
	})

	t.Run("only admin manages streams", func(t *testing.T) {
		for _, u := range []string{"intake", "approval", "provisioner", "ledger", "security"} {
			c[u].denied(t, "$JS.API.STREAM.CREATE.EVIL", func(ctx context.Context) error {
				_, err := c[u].js.CreateStream(ctx, jetstream.StreamConfig{Name: "EVIL", Subjects: []string{"evil.>"}})
				return err
			})
			c[u].denied(t, "$JS.API.STREAM.DELETE.TENURE_EVENTS", func(ctx context.Context) error {
				return c[u].js.DeleteStream(ctx, natsx.EventsStream)
			})
		}
		approval.denied(t, "$JS.API.STREAM.PURGE.TENURE_EVENTS", permRequestOp(approval, "$JS.API.STREAM.PURGE.TENURE_EVENTS", `{}`))
		security.denied(t, "$JS.API.STREAM.INFO.TENURE_EVENTS", func(ctx context.Context) error {
			_, err := security.js.Stream(ctx, natsx.EventsStream)
			return err
		})
		// Reading raw messages by sequence would bypass the consumer fences.
		provisioner.denied(t, "$JS.API.STREAM.MSG.GET.TENURE_EVENTS", permRequestOp(provisioner, "$JS.API.STREAM.MSG.GET.TENURE_EVENTS", `{"seq":1}`))
	})

	t.Run("services see the streams", func(t *testing.T) {
		for _, u := range []string{"intake", "approval", "provisioner", "ledger"} {
			if err := natsx.CheckStreams(ctx, c[u].js); err != nil {
				t.Errorf("%s: %v", u, err)
			}
			if _, err := c[u].js.AccountInfo(ctx); err != nil {
				t.Errorf("%s: account info: %v", u, err)
			}
		}
	})

	// Subjects each service may publish (with a JetStream PubAck).
	allowed := map[string][]string{
		"intake":      {"tenure.hr.joiner.w1", "tenure.dlq.intake"},
		"approval":    {"tenure.access.grant.w1", "tenure.alert.breakglass.w1", "tenure.dlq.approval"},
		"provisioner": {"tenure.provision.demo-ehr.create", "tenure.result.demo-ehr.ok", "tenure.revocation.disable.w1", "tenure.case.opened.w1", "tenure.alert.case-overdue.w1", "tenure.reconcile.finding.demo-ehr", "tenure.dlq.provisioner"},
		"ledger":      {"tenure.ledger.checkpoint.1", "tenure.dlq.ledger"},
	}
	t.Run("services publish their own subjects", func(t *testing.T) {
		for _, u := range []string{"intake", "approval", "provisioner", "ledger"} {
			for _, s := range allowed[u] {
				c[u].publish(t, s)
			}
		}
	})

	t.Run("services cannot publish others' subjects", func(t *testing.T) {
		deniedSubjects := map[string][]string{
			"intake":      {"tenure.access.x", "tenure.provision.demo-ehr.x", "tenure.revocation.x", "tenure.ledger.x", "tenure.dlq.approval"},
			"approval":    {"tenure.hr.joiner.x", "tenure.provision.demo-ehr.x", "tenure.result.x", "tenure.revocation.x"},
			"provisioner": {"tenure.hr.leaver.x", "tenure.access.revoke.x", "tenure.ledger.x", "tenure.dlq.approval"},
			"ledger":      {"tenure.hr.leaver.x", "tenure.revocation.x", "tenure.alert.x", "tenure.dlq.provisioner"},
			"security":    {"tenure.revocation.x", "tenure.hr.leaver.x", "tenure.alert.x", "tenure.dlq.security"},
		}
		for u, subjects := range deniedSubjects {
			for _, s := range subjects {
				c[u].denied(t, s, permPublishOp(c[u], s))
			}
		}
	})

	t.Run("no plain subscriptions on event subjects or other inboxes", func(t *testing.T) {
		intake.subDenied(t, "tenure.hr.>")
		approval.subDenied(t, "tenure.>")
		provisioner.subDenied(t, "_INBOX.>")
		ledger.subDenied(t, "_INBOX_approval.>")
		security.subDenied(t, "tenure.hr.>")
		security.subDenied(t, "_INBOX_provisioner.>")
	})

	t.Run("intake has no consumer", func(t *testing.T) {
		intake.denied(t, "$JS.API.CONSUMER.CREATE.TENURE_EVENTS.intake", permCreateConsumerOp(intake, permSpec("intake")))
	})

	t.Run("approval reads through its durable only", func(t *testing.T) {
		cons := permConsumer(t, approval, permSpec("approval", "tenure.hr.>", "tenure.result.>"))
		got := permFetchAll(t, approval, cons)
		permWantSubjects(t, "approval", got, "tenure.hr.joiner.w1", "tenure.result.demo-ehr.ok")
		for _, s := range got {
			if !strings.HasPrefix(s, "tenure.hr.") && !strings.HasPrefix(s, "tenure.result.") {
				t.Errorf("approval: got %s", s)
			}
		}
		approval.denied(t, "$JS.API.CONSUMER.CREATE.TENURE_EVENTS.provisioner", permCreateConsumerOp(approval, permSpec("provisioner", "tenure.hr.>", "tenure.access.>")))
		approval.denied(t, "$JS.API.CONSUMER.CREATE.TENURE_EVENTS.security-siem.tenure.revocation.>", permCreateConsumerOp(approval, permSpec("security-siem", "tenure.revocation.>")))
	})

	t.Run("provisioner reads through its durables only", func(t *testing.T) {
		cons := permConsumer(t, provisioner, permSpec("provisioner", "tenure.hr.>", "tenure.access.>"))
		permWantSubjects(t, "provisioner", permFetchAll(t, provisioner, cons), "tenure.hr.joiner.w1", "tenure.access.grant.w1")
		permConsumer(t, provisioner, permSpec("provisioner-demo-ehr", "tenure.provision.demo-ehr.>"))

		// A connector's durable is pinned to its own work queue.
		provisioner.denied(t, "$JS.API.CONSUMER.CREATE.TENURE_EVENTS.provisioner-demo-ehr.tenure.hr.>",
			permCreateConsumerOp(provisioner, permSpec("provisioner-demo-ehr", "tenure.hr.>")))
		provisioner.denied(t, "$JS.API.CONSUMER.CREATE.TENURE_EVENTS.provisioner-demo-wiki.tenure.provision.demo-ehr.>",
			permCreateConsumerOp(provisioner, permSpec("provisioner-demo-wiki", "tenure.provision.demo-ehr.>")))
		provisioner.denied(t, "$JS.API.CONSUMER.CREATE.TENURE_EVENTS.provisioner-demo-ehr",
			permCreateConsumerOp(provisioner, permSpec("provisioner-demo-ehr", "tenure.provision.demo-ehr.>", "tenure.hr.>")))
		provisioner.denied(t, "$JS.API.CONSUMER.CREATE.TENURE_EVENTS.provisioner-unlisted.tenure.provision.unlisted.>",
			permCreateConsumerOp(provisioner, permSpec("provisioner-unlisted", "tenure.provision.unlisted.>")))
		// Nobody may pull from, look up or delete another service's durable.
		provisioner.denied(t, "$JS.API.CONSUMER.MSG.NEXT.TENURE_EVENTS.approval",
			permRequestOp(provisioner, "$JS.API.CONSUMER.MSG.NEXT.TENURE_EVENTS.approval", `{"batch":1,"no_wait":true}`))
		provisioner.denied(t, "$JS.API.CONSUMER.INFO.TENURE_EVENTS.approval", func(ctx context.Context) error {
			_, err := provisioner.js.Consumer(ctx, natsx.EventsStream, "approval")
			return err
		})
		provisioner.denied(t, "$JS.API.CONSUMER.DELETE.TENURE_EVENTS.approval", func(ctx context.Context) error {
			return provisioner.js.DeleteConsumer(ctx, natsx.EventsStream, "approval")
		})
	})

	t.Run("a natsx.Consumer dead-letters under the provisioner's permissions", func(t *testing.T) {
		spec := natsx.ConsumerSpec{Durable: "provisioner-demo-ehr", FilterSubjects: []string{"tenure.provision.demo-ehr.>"}}
		cons, err := natsx.NewConsumer(ctx, provisioner.js, spec, func(context.Context, jetstream.Msg) error {
			return natsx.Permanent(errors.New("test: unusable task"))
		}, slog.New(slog.DiscardHandler))
		if err != nil {
			t.Fatal(err)
		}
		runCtx, stop := context.WithCancel(ctx)
		done := make(chan error, 1)
		go func() { done <- cons.Run(runCtx) }()
		defer func() { stop(); <-done }()
		dlq, err := admin.js.Stream(ctx, natsx.DLQStream)
		if err != nil {
			t.Fatal(err)
		}
		deadline := time.Now().Add(10 * time.Second)
		for {
			if _, err := dlq.GetLastMsgForSubject(ctx, "tenure.dlq.provisioner-demo-ehr"); err == nil {
				break
			}
			if time.Now().After(deadline) {
				t.Fatal("no dead letter on tenure.dlq.provisioner-demo-ehr")
			}
			time.Sleep(50 * time.Millisecond)
		}
	})

	t.Run("ledger reads everything through its durable", func(t *testing.T) {
		cons := permConsumer(t, ledger, permSpec("ledger"))
		permWantSubjects(t, "ledger", permFetchAll(t, ledger, cons),
			"tenure.hr.joiner.w1", "tenure.access.grant.w1", "tenure.provision.demo-ehr.create", "tenure.revocation.disable.w1", "tenure.ledger.checkpoint.1")
		ledger.denied(t, "$JS.API.CONSUMER.MSG.NEXT.TENURE_EVENTS.provisioner",
			permRequestOp(ledger, "$JS.API.CONSUMER.MSG.NEXT.TENURE_EVENTS.provisioner", `{"batch":1,"no_wait":true}`))
	})

	t.Run("security reads revocations only", func(t *testing.T) {
		if _, err := security.js.AccountInfo(ctx); err != nil {
			t.Errorf("security: account info: %v", err)
		}
		cons := permConsumer(t, security, permSpec("security-siem", "tenure.revocation.>"))
		got := permFetchAll(t, security, cons)
		if !slices.Equal(got, []string{"tenure.revocation.disable.w1"}) {
			t.Errorf("security: got %v, want [tenure.revocation.disable.w1]", got)
		}
		// A narrower filter is fine.
		permConsumer(t, security, permSpec("security-caep", "tenure.revocation.disable.>"))

		for _, tc := range []struct {
			subject string
			cfg     jetstream.ConsumerConfig
		}{
			{"$JS.API.CONSUMER.CREATE.TENURE_EVENTS.security-siem.tenure.hr.>", permSpec("security-siem", "tenure.hr.>")},
			{"$JS.API.CONSUMER.CREATE.TENURE_EVENTS.security-siem.>", permSpec("security-siem", ">")},
			{"$JS.API.CONSUMER.CREATE.TENURE_EVENTS.security-siem.tenure.*.>", permSpec("security-siem", "tenure.*.>")},
			{"$JS.API.CONSUMER.CREATE.TENURE_EVENTS.security-siem", permSpec("security-siem")},
			{"$JS.API.CONSUMER.CREATE.TENURE_EVENTS.security-siem", permSpec("security-siem", "tenure.revocation.>", "tenure.hr.>")},
			// Names are an allowlist: NATS wildcards match whole tokens, not "security-*".
			{"$JS.API.CONSUMER.CREATE.TENURE_EVENTS.security-x.tenure.revocation.>", permSpec("security-x", "tenure.revocation.>")},
			// Repointing a service's durable at revocations would starve that service.
			{"$JS.API.CONSUMER.CREATE.TENURE_EVENTS.approval.tenure.revocation.>", permSpec("approval", "tenure.revocation.>")},
		} {
			security.denied(t, tc.subject, permCreateConsumerOp(security, tc.cfg))
		}
		security.denied(t, "$JS.API.CONSUMER.MSG.NEXT.TENURE_EVENTS.approval",
			permRequestOp(security, "$JS.API.CONSUMER.MSG.NEXT.TENURE_EVENTS.approval", `{"batch":1,"no_wait":true}`))
		security.denied(t, "$JS.API.CONSUMER.MSG.NEXT.TENURE_EVENTS.ledger",
			permRequestOp(security, "$JS.API.CONSUMER.MSG.NEXT.TENURE_EVENTS.ledger", `{"batch":1,"no_wait":true}`))
		security.denied(t, "$JS.API.DIRECT.GET.TENURE_EVENTS",
			permRequestOp(security, "$JS.API.DIRECT.GET.TENURE_EVENTS", `{"seq":1}`))

		// A plain subscription sees live revocations.
		sub, err := security.nc.SubscribeSync("tenure.revocation.>")
		if err != nil {
			t.Fatal(err)
		}
		defer sub.Unsubscribe()
		if err := security.nc.Flush(); err != nil {
			t.Fatal(err)
		}
		provisioner.publish(t, "tenure.revocation.disable.w2")
		msg, err := sub.NextMsg(5 * time.Second)
		if err != nil {
			t.Fatalf("security: live revocation: %v", err)
		}
		if msg.Subject != "tenure.revocation.disable.w2" {
			t.Errorf("security: live revocation on %s", msg.Subject)
		}
		// Its own consumer can be removed.
		if err := security.js.DeleteConsumer(ctx, natsx.EventsStream, "security-caep"); err != nil {
			t.Errorf("security: delete own consumer: %v", err)
		}
	})

	t.Run("streams hold exactly the allowed publications", func(t *testing.T) {
		want := map[string][]string{natsx.EventsStream: {"tenure.revocation.disable.w2"}, natsx.DLQStream: {"tenure.dlq.provisioner-demo-ehr"}}
		for _, subjects := range allowed {
			for _, s := range subjects {
				stream := natsx.EventsStream
				if strings.HasPrefix(s, "tenure.dlq.") {
					stream = natsx.DLQStream
				}
				want[stream] = append(want[stream], s)
			}
		}
		for stream, w := range want {
			st, err := admin.js.Stream(ctx, stream)
			if err != nil {
				t.Fatal(err)
			}
			info, err := st.Info(ctx, jetstream.WithSubjectFilter(">"))
			if err != nil {
				t.Fatal(err)
			}
			var got []string
			for s := range info.State.Subjects {
				got = append(got, s)
			}
			slices.Sort(got)
			slices.Sort(w)
			if !slices.Equal(got, w) {
				t.Errorf("%s holds %v\nwant %v", stream, got, w)
			}
		}
	})
}

// TestNATSPermissionsBcryptFromEnv checks what accounts.conf tells operators: a bcrypt hash,
// wrapped in double quotes, can be passed in NATS_<USER>_PASSWORD so that the server never
// sees the plain password.
func TestNATSPermissionsBcryptFromEnv(t *testing.T) {
	permSetPasswords(t)
	hash, err := bcrypt.GenerateFromPassword([]byte(permPassword("ledger")), 4)
	if err != nil {
		t.Fatal(err)
	}
	t.Setenv("NATS_LEDGER_PASSWORD", `"`+string(hash)+`"`)
	ns := permStart(t, permLoad(t, permDeployFile(t, "nats.conf")))
	permConnect(t, ns.ClientURL(), "ledger")
	if nc, err := nats.Connect(ns.ClientURL(), nats.UserInfo("ledger", string(hash))); err == nil {
		nc.Close()
		t.Error("the hash itself was accepted as the password")
	}
}

// TestNATSPermissionsClusterConf starts deploy/nats/cluster.conf as a 3-node in-process cluster
// (TLS on client and route connections, with a throwaway CA), creates the streams with three
// replicas as admin, and publishes as intake.
func TestNATSPermissionsClusterConf(t *testing.T) {
	permSetPasswords(t)
	dir := t.TempDir()
	tlsDir := filepath.Join(dir, "tls")
	caPEM := permWriteTLS(t, tlsDir)
	for _, name := range []string{"cluster.conf", "accounts.conf"} {
		b, err := os.ReadFile(permDeployFile(t, name))
		if err != nil {
			t.Fatal(err)
		}
		b = []byte(strings.ReplaceAll(string(b), "/etc/nats/tls/", tlsDir+"/"))
		if err := os.WriteFile(filepath.Join(dir, name), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}

	// The conf's routes name the StatefulSet's pods; here they are three loopback ports.
	var routes []string
	var ports []int
	for range 3 {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
		routes = append(routes, fmt.Sprintf("nats://127.0.0.1:%d", ports[len(ports)-1]))
		l.Close()
	}
	var servers []*server.Server
	for i := range 3 {
		t.Setenv("NATS_SERVER_NAME", fmt.Sprintf("nats-%d", i))
		opts := permLoad(t, filepath.Join(dir, "cluster.conf"))
		if opts.ServerName != fmt.Sprintf("nats-%d", i) || opts.Cluster.Name != "tenure" || len(opts.Routes) != 3 {
			t.Fatalf("cluster.conf: server %q cluster %q routes %v", opts.ServerName, opts.Cluster.Name, opts.Routes)
		}
		if opts.TLSConfig == nil || opts.Cluster.TLSConfig == nil || opts.Cluster.TLSConfig.ClientAuth != tls.RequireAndVerifyClientCert {
			t.Fatal("cluster.conf: want TLS on clients and mutual TLS on routes")
		}
		opts.Cluster.Host = "127.0.0.1"
		opts.Cluster.Port = ports[i]
		opts.Routes = server.RoutesFromStr(strings.Join(routes, ","))
		servers = append(servers, permStart(t, opts))
	}

	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(caPEM)
	secure := nats.Secure(&tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12})
	admin := permConnect(t, servers[0].ClientURL(), "admin", secure)
	intake := permConnect(t, servers[2].ClientURL(), "intake", secure)

	ctx := context.Background()
	o := natsx.DefaultStreamOptions()
	o.Replicas = 3
	deadline := time.Now().Add(30 * time.Second)
	for {
		cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		err := natsx.EnsureStreams(cctx, admin.js, o)
		cancel()
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("R3 streams: %v", err)
		}
		time.Sleep(250 * time.Millisecond)
	}
	st, err := admin.js.Stream(ctx, natsx.EventsStream)
	if err != nil {
		t.Fatal(err)
	}
	info := st.CachedInfo()
	if info.Config.Replicas != 3 || info.Cluster == nil || len(info.Cluster.Replicas) != 2 {
		t.Fatalf("want 3 replicas, got config %d cluster %+v", info.Config.Replicas, info.Cluster)
	}
	intake.publish(t, "tenure.hr.joiner.c1")
	intake.denied(t, "tenure.access.x", permPublishOp(intake, "tenure.access.x"))

	// Without TLS the cluster is unreachable.
	if nc, err := nats.Connect(servers[1].ClientURL(), nats.UserInfo("intake", permPassword("intake"))); err == nil {
		nc.Close()
		t.Error("plain-text connection accepted")
	}
}

// permWriteTLS writes a throwaway CA and one server/client certificate (tls.crt, tls.key,
// ca.crt) valid for 127.0.0.1 and the StatefulSet's pod names. It returns the CA in PEM.
func permWriteTLS(t *testing.T, dir string) []byte {
	t.Helper()
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	caTmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "tenure test CA"},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	ca, err := x509.ParseCertificate(caDER)
	if err != nil {
		t.Fatal(err)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(2),
		Subject:      pkix.Name{CommonName: "nats"},
		NotBefore:    now.Add(-time.Hour),
		NotAfter:     now.Add(time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		DNSNames:     []string{"localhost", "nats-0.nats", "nats-1.nats", "nats-2.nats"},
		IPAddresses:  []net.IP{net.ParseIP("127.0.0.1")},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	caPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER})
	for name, data := range map[string][]byte{
		"ca.crt":  caPEM,
		"tls.crt": pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		"tls.key": pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER}),
	} {
		if err := os.WriteFile(filepath.Join(dir, name), data, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return caPEM
}
