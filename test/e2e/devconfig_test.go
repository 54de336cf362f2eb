package e2e

import (
	"bytes"
	"context"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/nats-io/nats.go"

	"github.com/tenure-dev/tenure/cmd/app"
	"github.com/tenure-dev/tenure/pkg/natsx"
	eventsv1 "github.com/tenure-dev/tenure/proto/tenure/events/v1"
	provisionerv1 "github.com/tenure-dev/tenure/proto/tenure/provisioner/v1"
)

// What the README shows: a real SCIM target and a real HRIS source (BambooHR) added to
// tenure dev by hand. They work, and the files the user wrote are byte for byte the same
// after two starts.
func TestDevKeepsUserConfigWithARealSCIMTargetAndHRISSource(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	scim := startSCIM(t)
	t.Setenv("TEST_OKTA_SCIM_TOKEN", scim.Token)
	t.Setenv("TEST_BAMBOOHR_API_KEY", "bamboo-api-key")
	files := map[string]string{
		"connectors.yaml": fmt.Sprintf(`# my real targets
connectors:
  - name: okta
    type: scim
    system: okta
    config:
      base_url: %s
      token: {env: TEST_OKTA_SCIM_TOKEN}
      allow_insecure_http: true   # the test's SCIM server is plain http on loopback
`, scim.URL),
		"webhook-sources.yaml": `sources:
  bamboo:
    format: bamboohr
    secrets: ["bamboohr-private-key-0123456789"]
    api:
      base_url: http://127.0.0.1:1/api/gateway.php/clinic/v1
      token_env: TEST_BAMBOOHR_API_KEY
`,
		"policy.yaml": strings.Replace(string(demoPolicy(t)), "packages:\n", `  - {name: okta, purpose: single sign-on, holds_ephi: false, connector: okta, owner: it-owner}
packages:
  - {name: okta-user, system: okta, entitlements: [], auto_approve: true}
`, 1),
	}
	files["policy.yaml"] = strings.Replace(files["policy.yaml"], "{job_code: CLERK, packages: [", "{job_code: CLERK, packages: [okta-user, ", 1)
	for name, body := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
	}

	for start := 1; start <= 2; start++ {
		d, err := app.StartDev(ctx, app.DevOptions{DataDir: dir, HTTPAddr: "127.0.0.1:0", GRPCAddr: "127.0.0.1:0", NATSPort: -1, Fast: true, Log: quietLogger()})
		if err != nil {
			t.Fatalf("start %d: %v", start, err)
		}
		worker := fmt.Sprintf("w-own-%d", start)
		hook := "http://" + d.HTTPAddr + "/webhooks/" + d.Secrets.WebhookSource
		if code, res := postWebhook(t, hook, d.Secrets.WebhookSecret, worker, hrEvent("hire", worker, "CLERK", worker+"@clinic.example")); code != 202 {
			d.Stop()
			t.Fatalf("start %d: joiner: %d %v", start, code, res)
		}
		prov := provisionerv1.NewProvisioningServiceClient(dial(t, d.GRPCAddr, d.Secrets.Tokens["admin"]))
		eventually(t, 30*time.Second, "the SCIM account verified", func() error {
			r, err := prov.ListAccounts(ctx, &provisionerv1.ListAccountsRequest{WorkerId: worker})
			if err != nil {
				return err
			}
			for _, a := range r.Accounts {
				if a.Connector == "okta" && a.ObservedState == eventsv1.AccountState_ACCOUNT_STATE_ENABLED {
					scim.User(t, a.Username) // it is in the SCIM server itself
					return nil
				}
			}
			return fmt.Errorf("accounts: %v", r.Accounts)
		})
		// The BambooHR source is served: an unsigned delivery is refused as unsigned, not as
		// an unknown source.
		resp, err := http.Post("http://"+d.HTTPAddr+"/webhooks/bamboo", "application/json", strings.NewReader(`{}`))
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusUnauthorized {
			t.Errorf("start %d: unsigned BambooHR delivery: %d, want 401", start, resp.StatusCode)
		}
		if err := d.Stop(); err != nil {
			t.Fatal(err)
		}
		for name, want := range files {
			got, err := os.ReadFile(filepath.Join(dir, name))
			if err != nil || string(got) != want {
				t.Fatalf("start %d changed the user's %s (err %v):\n%s", start, name, err, got)
			}
		}
	}
}

func demoPolicy(t *testing.T) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("..", "..", "cmd", "app", "demo", "policy.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// A connector or webhook source the user names like one of tenure dev's stops the start with
// the file and line of both.
func TestDevReportsAClashWithItsDemoConfig(t *testing.T) {
	ctx := context.Background()
	for _, tc := range []struct{ file, body, want string }{
		{"connectors.yaml", "connectors:\n  - name: okta\n    type: manual\n  - name: demo-wiki\n    type: manual\n",
			`connectors.yaml:4: connector "demo-wiki" is already defined at `},
		{"webhook-sources.yaml", "sources:\n  demo:\n    secrets: [\"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\"]\n",
			`webhook-sources.yaml:2: webhook source "demo" is already defined at `},
	} {
		dir := t.TempDir()
		if err := os.WriteFile(filepath.Join(dir, tc.file), []byte(tc.body), 0o600); err != nil {
			t.Fatal(err)
		}
		d, err := app.StartDev(ctx, app.DevOptions{DataDir: dir, HTTPAddr: "127.0.0.1:0", GRPCAddr: "127.0.0.1:0", NATSPort: -1, Fast: true, Log: quietLogger()})
		if err == nil {
			d.Stop()
			t.Fatalf("%s clashing with the demo config: started", tc.file)
		}
		if !strings.Contains(err.Error(), filepath.Join(dir, tc.want)) || !strings.Contains(err.Error(), filepath.Join(dir, "generated")) {
			t.Errorf("%s clash: error %q does not name both places (want %q)", tc.file, err, tc.want)
		}
	}
}

// tenure dev is closed and durable by default: its NATS refuses anonymous clients (and a
// service user may not publish what is not its own), its PostgreSQL fsyncs, and it says so.
func TestDevIsClosedAndDurableByDefault(t *testing.T) {
	ctx := context.Background()
	d, err := app.StartDev(ctx, app.DevOptions{DataDir: t.TempDir(), HTTPAddr: "127.0.0.1:0", GRPCAddr: "127.0.0.1:0", NATSPort: -1, Log: quietLogger()})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Stop()
	if nc, err := nats.Connect(d.NATSURL, nats.Timeout(5*time.Second)); err == nil {
		nc.Close()
		t.Fatal("the dev NATS let an anonymous client in")
	} else if !strings.Contains(strings.ToLower(err.Error()), "authorization") {
		t.Fatalf("anonymous client: %v, want an authorization error", err)
	}
	errs := make(chan error, 1)
	nc, err := d.ConnectNATS("intake", nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) { errs <- err }))
	if err != nil {
		t.Fatalf("intake with its password from secrets.yaml: %v", err)
	}
	defer nc.Close()
	nc.Publish("tenure.revocation.account_disabled.w-1", []byte("forged"))
	nc.Flush()
	select {
	case err := <-errs:
		if !strings.Contains(err.Error(), "Permissions Violation") {
			t.Fatalf("intake publishing a revocation: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("intake could publish a revocation event")
	}
	secrets, _ := os.ReadFile(filepath.Join(d.DataDir, "secrets.yaml"))
	if !bytes.Contains(secrets, []byte("nats_passwords:")) {
		t.Errorf("secrets.yaml holds no NATS passwords:\n%s", secrets)
	}

	conn, err := pgx.Connect(ctx, d.DatabaseURL)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	var fsync string
	if err := conn.QueryRow(ctx, "SHOW fsync").Scan(&fsync); err != nil || fsync != "on" {
		t.Fatalf("dev PostgreSQL fsync = %q (%v), want on", fsync, err)
	}
	var out bytes.Buffer
	d.PrintEndpoints(&out)
	if !strings.Contains(out.String(), "durable (fsync on)") || !strings.Contains(out.String(), "no anonymous clients") {
		t.Errorf("start-up output does not say it is durable and closed:\n%s", out.String())
	}
}

// A data directory an earlier tenure dev wrote (its connectors and sources files rewritten at
// every start, no NATS passwords) starts: those generated files are set aside, the webhook
// secret and tokens are kept, and NATS passwords are added.
func TestDevUpgradesAnEarlierDataDirectory(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	old := map[string]string{
		"connectors.yaml":      "# Demo targets of `tenure dev`: PostgreSQL roles in the dev cluster.\nconnectors:\n  - name: demo-wiki\n    type: postgres\n",
		"webhook-sources.yaml": "# Webhook sources of tenure dev.\nsources:\n  demo:\n    secrets: [\"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\"]\n",
		"secrets.yaml":         "webhook_source: demo\nwebhook_secret: whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\ntokens:\n  admin: tnr_admin_0123456789abcdef0123456789abcdef\n",
	}
	for name, body := range old {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	d, err := app.StartDev(ctx, app.DevOptions{DataDir: dir, HTTPAddr: "127.0.0.1:0", GRPCAddr: "127.0.0.1:0", NATSPort: -1, Fast: true, Log: quietLogger()})
	if err != nil {
		t.Fatalf("start on an earlier data directory: %v", err)
	}
	defer d.Stop()
	if d.Secrets.WebhookSecret != "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw" || d.Secrets.Tokens["admin"] != "tnr_admin_0123456789abcdef0123456789abcdef" {
		t.Errorf("secrets not kept: %+v", d.Secrets)
	}
	if len(d.Secrets.NATS) != len(natsx.ServiceUsers) {
		t.Errorf("NATS passwords: %v", d.Secrets.NATS)
	}
	for _, name := range []string{"connectors.yaml", "webhook-sources.yaml"} {
		if b, err := os.ReadFile(filepath.Join(dir, name+".old")); err != nil || string(b) != old[name] {
			t.Errorf("%s not set aside as %s.old: %v", name, name, err)
		}
		if b, _ := os.ReadFile(filepath.Join(dir, name)); !strings.Contains(string(b), "never rewrites this file") {
			t.Errorf("%s is not the user template:\n%s", name, b)
		}
	}
	hook := "http://" + d.HTTPAddr + "/webhooks/demo"
	if code, res := postWebhook(t, hook, d.Secrets.WebhookSecret, "up-1", hrEvent("hire", "w-up-1", "CLERK", "up@clinic.example")); code != 202 {
		t.Fatalf("joiner through the kept demo source: %d %v", code, res)
	}
}
