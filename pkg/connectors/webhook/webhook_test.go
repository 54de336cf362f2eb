package webhook_test

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/tenure-dev/tenure/pkg/connector"
	"github.com/tenure-dev/tenure/pkg/connector/connectortest"
	"github.com/tenure-dev/tenure/pkg/connectors/webhook"
	"github.com/tenure-dev/tenure/pkg/connectors/webhook/webhooktest"
	stdwebhook "github.com/tenure-dev/tenure/pkg/webhook"
)

func newReceiver(t *testing.T, secret string) *webhooktest.Receiver {
	return webhooktest.Start(t, secret, connectortest.NewMemory("read", "write"))
}

const testSecret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw" // 24 bytes, fixed so failures reproduce

// open opens the connector the way the provisioner does: by type name from YAML.
func open(t *testing.T, url, secret string) connector.Connector {
	t.Helper()
	c, err := connector.Open(context.Background(), webhook.TypeName, []byte(fmt.Sprintf("url: %s\nsecret: %q\nheaders: {x-api-key: k-123}\n", url, secret)))
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestConformance(t *testing.T) {
	r := newReceiver(t, testSecret)
	connectortest.Run(t, connectortest.Harness{
		New: func(t *testing.T) connector.Connector { return open(t, r.URL, testSecret) },
		Features: connectortest.Features{Create: true, Disable: true, Enable: true, Delete: true,
			Entitlements: true, Sessions: true, List: true, Credentials: true, Profile: true},
		Entitlements: []string{"read", "write"},
		// The receiver's own account system is the target: the credential is checked there.
		Credentials: &connectortest.CredentialProbe{
			Give: func(t *testing.T, _ connector.Connector, acc connector.Account) {
				if err := r.Store.SetCredential(connector.AccountRef{Username: acc.Username}, "tok-"+acc.Username); err != nil {
					t.Fatal(err)
				}
			},
			Works: func(t *testing.T, _ connector.Connector, acc connector.Account) bool {
				return r.Store.Authenticate(connector.AccountRef{Username: acc.Username}, "tok-"+acc.Username)
			},
		},
	})
}

// A receiver holding another secret refuses tenure's signature, and that is permanent: no
// retry fixes a wrong secret.
func TestWrongSecretIsPermanent(t *testing.T) {
	r := newReceiver(t, stdwebhook.NewSecret())
	c := open(t, r.URL, testSecret)
	_, err := c.GetAccount(context.Background(), connector.AccountRef{Username: "ada"})
	if connector.KindOf(err) != connector.KindPermanent || !strings.Contains(err.Error(), "HTTP 401") {
		t.Fatalf("GetAccount with a wrong secret = %v (kind %v)", err, connector.KindOf(err))
	}
	if strings.Contains(err.Error(), strings.TrimPrefix(testSecret, "whsec_")) {
		t.Fatal("the error shows the secret")
	}
}

func TestStatusCodesAreErrorClasses(t *testing.T) {
	r := newReceiver(t, testSecret)
	c := open(t, r.URL, testSecret)
	ctx := context.Background()
	if _, err := c.(connector.Creator).CreateAccount(ctx, connector.AccountSpec{Username: "ada", WorkerID: "w1"}); err != nil {
		t.Fatal(err)
	}
	ref := connector.AccountRef{Username: "ada"}
	date := time.Now().Add(3 * time.Second).UTC().Format(http.TimeFormat)
	for _, tc := range []struct {
		name   string
		status int
		header http.Header
		call   func() error
		kind   connector.ErrorKind
		after  time.Duration // minimum Retry-After
		unsup  bool
	}{
		{"429 with seconds", 429, http.Header{"Retry-After": {"7"}}, func() error { return c.(connector.Disabler).DisableAccount(ctx, ref) }, connector.KindRetryable, 7 * time.Second, false},
		{"503 with a date", 503, http.Header{"Retry-After": {date}}, func() error { return c.(connector.Disabler).DisableAccount(ctx, ref) }, connector.KindRetryable, time.Second, false},
		{"503 without a hint", 503, nil, func() error { return c.(connector.Enabler).EnableAccount(ctx, ref) }, connector.KindRetryable, 0, false},
		{"500", 500, nil, func() error { return c.(connector.Disabler).DisableAccount(ctx, ref) }, connector.KindRetryable, 0, false},
		{"403", 403, nil, func() error { return c.(connector.Disabler).DisableAccount(ctx, ref) }, connector.KindPermanent, 0, false},
		{"400", 400, nil, func() error { return c.(connector.EntitlementGranter).GrantEntitlement(ctx, ref, "read") }, connector.KindPermanent, 0, false},
		{"404 on get", 404, nil, func() error { _, err := c.GetAccount(ctx, ref); return err }, connector.KindNotFound, 0, false},
		{"501", 501, nil, func() error { return c.(connector.SessionRevoker).RevokeSessions(ctx, ref) }, connector.KindPermanent, 0, true},
		{"501 on revoke_credentials", 501, nil, func() error { return c.(connector.CredentialRevoker).RevokeCredentials(ctx, ref) }, connector.KindPermanent, 0, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r.Override(func(string) (int, http.Header) { return tc.status, tc.header })
			defer r.Override(nil)
			err := tc.call()
			if err == nil || connector.KindOf(err) != tc.kind {
				t.Fatalf("error %v: kind %v, want %v", err, connector.KindOf(err), tc.kind)
			}
			if ra := connector.RetryAfterOf(err); ra < tc.after || (tc.after == 0 && ra != 0) {
				t.Errorf("Retry-After %s, want at least %s", ra, tc.after)
			}
			if errors.Is(err, connector.ErrUnsupported) != tc.unsup {
				t.Errorf("ErrUnsupported: %v", err)
			}
			if !strings.Contains(err.Error(), fmt.Sprintf("injected %d", tc.status)) {
				t.Errorf("error %q does not show the receiver's answer", err)
			}
		})
	}
	// 404 on delete: already gone is success.
	r.Override(func(op string) (int, http.Header) { return 404, nil })
	if err := c.(connector.Deleter).DeleteAccount(ctx, ref); err != nil {
		t.Fatalf("delete of an absent account: %v", err)
	}
	// 409 on create: the account exists and is read back unchanged.
	r.Override(func(op string) (int, http.Header) {
		if op == webhook.OpCreate {
			return 409, nil
		}
		return 0, nil
	})
	a, err := c.(connector.Creator).CreateAccount(ctx, connector.AccountSpec{Username: "ada"})
	if err != nil || a.Username != "ada" || a.State != connector.StateEnabled {
		t.Fatalf("create after 409 = %+v, %v", a, err)
	}
	r.Override(nil)
	// Every request was signed and fresh (the receiver refuses replays).
	if n := len(r.Requests()); n < 10 {
		t.Fatalf("receiver saw %d requests", n)
	}
}

// A down receiver is retryable.
func TestUnreachableIsRetryable(t *testing.T) {
	r := newReceiver(t, testSecret)
	url := r.URL
	r.Close()
	_, err := open(t, url, testSecret).GetAccount(context.Background(), connector.AccountRef{Username: "x"})
	if err == nil || connector.KindOf(err) != connector.KindRetryable {
		t.Fatalf("GetAccount of a closed server = %v", err)
	}
}

func TestConfigErrors(t *testing.T) {
	t.Setenv("WH_SECRET", testSecret)
	for _, tc := range []struct {
		name, config string
		want         []string
	}{
		{"nothing", "{}", []string{"url: is required", "secret: is required"}},
		{"plain http to a remote host", "url: http://hooks.example.org/x\nsecret: {env: WH_SECRET}", []string{"url: must be https"}},
		{"credentials in the URL", "url: https://u:p@hooks.example.org/x\nsecret: {env: WH_SECRET}", []string{"url: must not hold credentials"}},
		{"not a whsec secret", "url: https://hooks.example.org/x\nsecret: short", []string{"secret (value)"}},
		{"missing env", "url: https://hooks.example.org/x\nsecret: {env: NOT_SET_ANYWHERE_42}", []string{"secret:", "NOT_SET_ANYWHERE_42"}},
		{"reserved header", "url: https://hooks.example.org/x\nsecret: {env: WH_SECRET}\nheaders: {webhook-signature: x}", []string{"headers: webhook-signature is set by tenure"}},
		{"unknown field", "url: https://hooks.example.org/x\nsecret: {env: WH_SECRET}\ntimeout: 5s", []string{`line 3: unknown field "timeout"`}},
		{"bad ca file", "url: https://hooks.example.org/x\nsecret: {env: WH_SECRET}\nca_file: /nonexistent/ca.pem", []string{"ca_file:"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := connector.Open(context.Background(), webhook.TypeName, []byte(tc.config))
			if err == nil {
				t.Fatal("accepted")
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not mention %q", err, w)
				}
			}
			if strings.Contains(err.Error(), "MfKQ9r8GKYqr") {
				t.Errorf("error shows the secret: %v", err)
			}
		})
	}
	if _, err := connector.Open(context.Background(), webhook.TypeName, []byte("url: https://hooks.example.org/x\nsecret: {env: WH_SECRET}")); err != nil {
		t.Fatalf("good config: %v", err)
	}
}
