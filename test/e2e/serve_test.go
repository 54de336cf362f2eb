package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tenure-dev/tenure/pkg/natsx"
	"github.com/tenure-dev/tenure/pkg/pgstore"
	"github.com/tenure-dev/tenure/pkg/pgtest"
	"github.com/tenure-dev/tenure/pkg/webhook"
	eventsv1 "github.com/tenure-dev/tenure/proto/tenure/events/v1"
	provisionerv1 "github.com/tenure-dev/tenure/proto/tenure/provisioner/v1"
)

type serveEnv struct {
	tenure, tenurectl string
	natsURL, adminURL string
	dir, token        string
	secret            string
}

// newServeEnv starts NATS (with natsConf, e.g. deploy/nats/nats.conf, when given), makes a
// fresh database and writes tokens, sources, policy and connectors files. The connector is
// named connectorName.
func newServeEnv(t *testing.T, natsConf, connectorName string) *serveEnv {
	t.Helper()
	tenure, tenurectl := binaries(t)
	ns, err := natsx.StartEmbedded(natsx.EmbeddedOptions{StoreDir: t.TempDir(), ConfigFile: natsConf})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ns.Shutdown(); ns.WaitForShutdown() })
	e := &serveEnv{tenure: tenure, tenurectl: tenurectl, natsURL: ns.ClientURL(), adminURL: pgtest.NewDatabase(t), dir: t.TempDir(),
		token: "op-" + fmt.Sprint(time.Now().UnixNano()), secret: webhook.NewSecret()}
	prefix := fmt.Sprintf("s%d_", time.Now().UnixNano()%1_000_000)
	files := map[string]string{
		"tokens.yaml":  fmt.Sprintf("tokens:\n  - {name: olga, roles: [operator, auditor], token: %q}\n", e.token),
		"sources.yaml": "sources:\n  hr:\n    secrets_env: [E2E_HR_SECRET]\n",
		"policy.yaml": `systems:
  - {name: reporting, holds_ephi: false, connector: ` + connectorName + `}
packages:
  - {name: reporting-reader, system: reporting, entitlements: [g` + prefix + `readers], auto_approve: true}
roles:
  - {job_code: ANALYST, packages: [reporting-reader]}
`,
		"connectors.yaml": fmt.Sprintf("connectors:\n  - name: %s\n    type: postgres\n    system: reporting\n    config:\n      url: {env: E2E_TARGET_URL}\n      role_prefix: %s\n      groups: [g%sreaders]\n      create_groups: true\n", connectorName, prefix, prefix),
	}
	for name, body := range files {
		if err := os.WriteFile(filepath.Join(e.dir, name), []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return e
}

func (e *serveEnv) cmd(ctx context.Context, bin string, args ...string) *exec.Cmd {
	c := exec.CommandContext(ctx, bin, args...)
	c.Env = append(os.Environ(), "E2E_HR_SECRET="+e.secret, "E2E_TARGET_URL="+e.adminURL)
	return c
}

func (e *serveEnv) serve(t *testing.T, target string, extraEnv ...string) (httpAddr, grpcAddr string) {
	t.Helper()
	httpAddr, grpcAddr = freeAddr(t), freeAddr(t)
	ctx, cancel := context.WithCancel(context.Background())
	c := e.cmd(ctx, e.tenure, "serve", "--target="+target, "--nats-url", e.natsURL, "--http-addr", httpAddr, "--grpc-addr", grpcAddr,
		"--tokens-file", filepath.Join(e.dir, "tokens.yaml"), "--webhook-sources", filepath.Join(e.dir, "sources.yaml"),
		"--policy", filepath.Join(e.dir, "policy.yaml"), "--connectors", filepath.Join(e.dir, "connectors.yaml"),
		"--ledger-key-file", filepath.Join(e.dir, "ledger.key"))
	for _, svc := range strings.Split(target, ",") {
		// Each service connects as its own database role.
		u, _ := pgstore.ServiceURL(e.adminURL, svc, "")
		c.Env = append(c.Env, "TENURE_"+strings.ToUpper(svc)+"_DATABASE_URL="+u)
	}
	c.Env = append(c.Env, extraEnv...)
	var stderr safeBuffer
	c.Stderr = &stderr
	c.Cancel = func() error { return c.Process.Signal(os.Interrupt) }
	if err := c.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { c.Wait(); close(done) }()
	t.Cleanup(func() {
		cancel()
		select {
		case <-done:
		case <-time.After(20 * time.Second):
			c.Process.Kill()
		}
		if t.Failed() {
			t.Logf("tenure serve --target=%s stderr:\n%s", target, stderr.String())
		}
	})
	eventually(t, 60*time.Second, "tenure serve --target="+target+" ready", func() error {
		select {
		case <-done:
			t.Fatalf("tenure serve --target=%s exited: %s", target, stderr.String())
		default:
		}
		out, err := exec.Command(e.tenure, "healthcheck", "--url", "http://"+httpAddr+"/readyz").CombinedOutput()
		if err != nil {
			return fmt.Errorf("%v %s", err, out)
		}
		return nil
	})
	return httpAddr, grpcAddr
}

// Two `tenure serve` processes with different targets, one NATS and one PostgreSQL, set up
// by `tenure setup`, work together on a joiner and a leaver; tenurectl reads the case and
// the ledger over gRPC.
func TestServeProcessesWorkTogether(t *testing.T) {
	e := newServeEnv(t, "", "reports")
	out, err := e.cmd(context.Background(), e.tenure, "setup", "--nats-url", e.natsURL, "--database-url", e.adminURL).CombinedOutput()
	if err != nil {
		t.Fatalf("tenure setup: %v\n%s", err, out)
	}
	httpA, _ := e.serve(t, "intake,approval")
	_, grpcB := e.serve(t, "provisioner,ledger")

	worker := "w-proc-1"
	hook := "http://" + httpA + "/webhooks/hr"
	if code, res := postWebhook(t, hook, e.secret, "j1", hrEvent("hire", worker, "ANALYST", "alan.turing@clinic.example")); code != 202 {
		t.Fatalf("joiner: %d %v", code, res)
	}
	prov := provisionerv1.NewProvisioningServiceClient(dial(t, grpcB, e.token))
	eventually(t, 30*time.Second, "account created", func() error {
		r, err := prov.ListAccounts(context.Background(), &provisionerv1.ListAccountsRequest{WorkerId: worker})
		if err != nil {
			return err
		}
		if len(r.Accounts) != 1 || r.Accounts[0].ObservedState != eventsv1.AccountState_ACCOUNT_STATE_ENABLED {
			return fmt.Errorf("accounts %v", r.Accounts)
		}
		return nil
	})
	if code, res := postWebhook(t, hook, e.secret, "t1", hrEvent("termination", worker, "", "")); code != 202 {
		t.Fatalf("termination: %d %v", code, res)
	}
	ctl := func(args ...string) string {
		t.Helper()
		args = append(args, "--addr", grpcB, "--token", e.token, "--plaintext", "--config", filepath.Join(e.dir, "none.yaml"))
		out, err := e.cmd(context.Background(), e.tenurectl, args...).CombinedOutput()
		if err != nil {
			t.Fatalf("tenurectl %v: %v\n%s", args, err, out)
		}
		return string(out)
	}
	caseOut := ctl("case", worker, "--wait", "30s")
	for _, want := range []string{"completed", "reports", "alan.turing", "verified", "disabled"} {
		if !strings.Contains(caseOut, want) {
			t.Errorf("tenurectl case output lacks %q:\n%s", want, caseOut)
		}
	}
	var ledgerOut string
	eventually(t, 10*time.Second, "ledger has the leaver", func() error {
		ledgerOut = ctl("ledger", "query", "--worker", worker)
		if !strings.Contains(ledgerOut, "tenure.revocation.case_completed."+worker) {
			return fmt.Errorf("ledger:\n%s", ledgerOut)
		}
		return nil
	})
	for _, want := range []string{"tenure.hr.joiner." + worker, "tenure.access.grant." + worker, "tenure.hr.leaver." + worker,
		"tenure.case.opened." + worker, "tenure.provision.reports.disable", "tenure.revocation.account_disabled." + worker, "tenure.case.completed." + worker} {
		if !strings.Contains(ledgerOut, want) {
			t.Errorf("tenurectl ledger query lacks %s:\n%s", want, ledgerOut)
		}
	}
	if out := ctl("ledger", "verify"); !strings.Contains(out, "ledger intact") {
		t.Errorf("ledger verify: %s", out)
	}
	// JSON output is machine-readable.
	var js struct {
		LeaverCase struct {
			Status   string `json:"status"`
			Accounts []struct {
				Status string `json:"status"`
			} `json:"accounts"`
		} `json:"leaverCase"`
	}
	jsonOut := ctl("case", worker, "-o", "json")
	if err := json.Unmarshal([]byte(jsonOut), &js); err != nil || js.LeaverCase.Status != "LEAVER_CASE_STATUS_COMPLETED" || len(js.LeaverCase.Accounts) != 1 {
		t.Errorf("tenurectl case -o json (%v):\n%s", err, jsonOut)
	}
}

// A `tenure serve` with a missing or unreachable database or NATS fails fast with a clear message.
func TestServeFailsFast(t *testing.T) {
	e := newServeEnv(t, "", "reports")
	tokens := filepath.Join(e.dir, "tokens.yaml")
	key := filepath.Join(e.dir, "ledger.key")
	cases := []struct {
		name string
		args []string
		want string
	}{
		{"streams missing", []string{"--target=ledger", "--ledger-key-file", key, "--nats-url", e.natsURL, "--tokens-file", tokens, "--database-url", e.adminURL}, "tenure setup"},
		{"database unreachable", []string{"--target=ledger", "--ledger-key-file", key, "--ensure-streams", "--nats-url", e.natsURL, "--tokens-file", tokens, "--database-url", "postgres://tenure_ledger:pw-secret@127.0.0.1:1/tenure?sslmode=disable"}, "unreachable"},
		{"no database", []string{"--target=ledger", "--ledger-key-file", key, "--nats-url", e.natsURL, "--tokens-file", tokens}, "ledger needs a database"},
		{"NATS unreachable", []string{"--target=ledger", "--ledger-key-file", key, "--nats-url", "nats://127.0.0.1:1", "--tokens-file", tokens, "--database-url", e.adminURL}, "NATS at nats://127.0.0.1:1 unreachable"},
		{"no ledger key", []string{"--target=ledger", "--nats-url", e.natsURL, "--tokens-file", tokens, "--database-url", e.adminURL}, "ledger needs --ledger-key-file"},
		{"unknown target", []string{"--target=billing", "--nats-url", e.natsURL}, `unknown target "billing"`},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			start := time.Now()
			out, err := e.cmd(ctx, e.tenure, append([]string{"serve", "--connect-timeout", "3s"}, tc.args...)...).CombinedOutput()
			if err == nil || ctx.Err() != nil {
				t.Fatalf("want a prompt failure, got err=%v after %v:\n%s", err, time.Since(start), out)
			}
			if !strings.Contains(string(out), tc.want) {
				t.Fatalf("output lacks %q:\n%s", tc.want, out)
			}
			if strings.Contains(string(out), "pw-secret") {
				t.Fatalf("output leaks the password:\n%s", out)
			}
		})
	}
}
