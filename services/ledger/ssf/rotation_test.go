package ssf_test

import (
	"context"
	"crypto/rand"
	"crypto/rsa"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/lestrrat-go/jwx/v2/jws"

	"github.com/tenure-dev/tenure/pkg/natsx/natstest"
	"github.com/tenure-dev/tenure/pkg/pgstore"
	"github.com/tenure-dev/tenure/pkg/pgtest"
	eventsv1 "github.com/tenure-dev/tenure/proto/tenure/events/v1"
	"github.com/tenure-dev/tenure/services/ledger/ssf"
)

// Rotating the signing key: the old key file moves aside and is listed as retired, a new key
// is made in its place. SETs signed before the rotation and not yet acknowledged still verify
// against the JWKS, which now publishes both keys; new SETs are signed with the new key.
func TestKeyRotationKeepsEarlierSETsVerifiable(t *testing.T) {
	e := startEnv(t, ssf.Config{}, pgtest.NewDatabase(t), natstest.Start(t), nil)
	var pc map[string]any
	if code := e.call("POST", "/ssf/streams", "idp-token", map[string]any{
		"delivery": map[string]string{"method": "urn:ietf:rfc:8936"}, "events_requested": []string{accountDisabled},
	}, &pc); code != http.StatusCreated {
		t.Fatalf("create poll stream: %d %v", code, pc)
	}
	pollID := pc["stream_id"].(string)
	poll := func(e *env) map[string]string {
		var res struct {
			Sets map[string]string `json:"sets"`
		}
		if code := e.call("POST", "/ssf/poll/"+pollID, "idp-token", map[string]any{"returnImmediately": true, "maxEvents": 10}, &res); code != http.StatusOK {
			t.Fatalf("poll: %d", code)
		}
		return res.Sets
	}
	e.publish(eventsv1.RevocationKind_REVOCATION_KIND_ACCOUNT_DISABLED, "w-old", "", "ehr")
	waitFor(t, "the SET signed before the rotation", func() bool { return len(poll(e)) == 1 })
	oldKid := e.tx.KeyID()

	e.cancel()
	keyFile := dbKeyFile(t, e.dbURL)
	retired := keyFile + ".retired"
	if err := os.Rename(keyFile, retired); err != nil {
		t.Fatal(err)
	}
	lis, err := net.Listen("tcp", strings.TrimPrefix(e.url, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	e2 := startEnv(t, ssf.Config{RetiredKeyFiles: []string{retired}}, e.dbURL, e.nats, lis)
	if e2.tx.KeyID() == oldKid {
		t.Fatal("the rotated transmitter still signs with the old key")
	}
	r := discover(t, e2.url, "idp")
	if r.keys.Len() != 2 {
		t.Fatalf("JWKS has %d keys, want the new and the retired one", r.keys.Len())
	}
	e2.publish(eventsv1.RevocationKind_REVOCATION_KIND_ACCOUNT_DISABLED, "w-new", "", "ehr")
	var sets map[string]string
	waitFor(t, "both SETs", func() bool { sets = poll(e2); return len(sets) == 2 })
	kids := map[string]bool{}
	for _, tok := range sets {
		if _, err := r.validate(tok); err != nil {
			t.Fatalf("SET after the rotation: %v", err)
		}
		msg, err := jws.Parse([]byte(tok))
		if err != nil {
			t.Fatal(err)
		}
		kids[msg.Signatures()[0].ProtectedHeaders().KeyID()] = true
	}
	if !kids[oldKid] || !kids[e2.tx.KeyID()] {
		t.Fatalf("SETs signed with %v, want the old key %s and the new %s", kids, oldKid, e2.tx.KeyID())
	}
}

// A retired key that is missing, is the signing key, or is not an RSA key stops the
// transmitter at start, naming the file.
func TestRetiredKeysAreChecked(t *testing.T) {
	ns := natstest.Start(t)
	pool, err := pgstore.Connect(context.Background(), pgtest.NewDatabase(t), "ssf")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	dir := t.TempDir()
	current := filepath.Join(dir, "ssf.key")
	if _, err := ssf.LoadOrCreateKey(current); err != nil {
		t.Fatal(err)
	}
	notRSA := filepath.Join(dir, "cert.pem")
	os.WriteFile(notRSA, []byte("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"), 0o600)
	other, _ := rsa.GenerateKey(rand.Reader, 2048)
	for _, tc := range []struct {
		name    string
		cfg     ssf.Config
		wantErr string
	}{
		{"missing", ssf.Config{RetiredKeyFiles: []string{filepath.Join(dir, "gone.key")}}, "gone.key"},
		{"the signing key", ssf.Config{RetiredKeyFiles: []string{current}}, "is the signing key"},
		{"not a key", ssf.Config{RetiredKeyFiles: []string{notRSA}}, "cert.pem"},
		{"listed twice", ssf.Config{RetiredKeys: []*rsa.PublicKey{&other.PublicKey, &other.PublicKey}}, "RetiredKeys[1] is RetiredKeys[0]"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := tc.cfg
			cfg.Issuer, cfg.AllowHTTP, cfg.KeyFile = "http://127.0.0.1:1", true, current
			_, err := ssf.New(context.Background(), cfg, ssf.Deps{Pool: pool, JS: ns.JS, Auth: tokens(t)})
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("New: %v, want an error naming %q", err, tc.wantErr)
			}
		})
	}
}
