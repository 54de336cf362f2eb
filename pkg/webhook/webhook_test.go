package webhook

import (
	"errors"
	"net/http"
	"strconv"
	"testing"
	"time"

	standardwebhooks "github.com/standard-webhooks/standard-webhooks/libraries/go"
)

// The reference library signs; our verifier must accept it, and the reverse.
func TestInteropWithReferenceLibrary(t *testing.T) {
	secret := NewSecret()
	key, err := ParseSecret(secret)
	if err != nil {
		t.Fatal(err)
	}
	ref, err := standardwebhooks.NewWebhook(secret)
	if err != nil {
		t.Fatal(err)
	}
	body := []byte(`{"type":"termination"}`)
	now := time.Now()
	sig, err := ref.Sign("msg_1", now, body)
	if err != nil {
		t.Fatal(err)
	}
	v := &Verifier{Keys: [][]byte{key}}
	if _, err := v.Verify("msg_1", strconv.FormatInt(now.Unix(), 10), sig, body); err != nil {
		t.Fatalf("reference signature rejected: %v", err)
	}
	h := http.Header{}
	h.Set(HeaderID, "msg_2")
	h.Set(HeaderTimestamp, strconv.FormatInt(now.Unix(), 10))
	h.Set(HeaderSignature, Sign(key, "msg_2", now, body))
	if err := ref.Verify(body, h); err != nil {
		t.Fatalf("reference library rejects our signature: %v", err)
	}
}

func TestVerify(t *testing.T) {
	oldKey, _ := ParseSecret(NewSecret())
	newKey, _ := ParseSecret(NewSecret())
	otherKey, _ := ParseSecret(NewSecret())
	now := time.Unix(1_800_000_000, 0)
	body := []byte(`{"a":1}`)
	ts := strconv.FormatInt(now.Unix(), 10)
	v := &Verifier{Keys: [][]byte{oldKey, newKey}, Now: func() time.Time { return now }}
	tests := []struct {
		name        string
		id, ts, sig string
		body        []byte
		want        error
	}{
		{"old secret during rotation", "m", ts, Sign(oldKey, "m", now, body), body, nil},
		{"new secret", "m", ts, Sign(newKey, "m", now, body), body, nil},
		{"several signatures, one good", "m", ts, Sign(otherKey, "m", now, body) + " " + Sign(newKey, "m", now, body), body, nil},
		{"unknown secret", "m", ts, Sign(otherKey, "m", now, body), body, ErrBadSignature},
		{"body changed", "m", ts, Sign(newKey, "m", now, body), []byte(`{"a":2}`), ErrBadSignature},
		{"id changed", "m2", ts, Sign(newKey, "m", now, body), body, ErrBadSignature},
		{"missing id", "", ts, "v1,x", body, ErrMissingHeader},
		{"missing timestamp", "m", "", "v1,x", body, ErrMissingHeader},
		{"missing signature", "m", ts, "", body, ErrMissingHeader},
		{"timestamp not a number", "m", "yesterday", "v1,x", body, ErrBadTimestamp},
		{"stale", "m", strconv.FormatInt(now.Add(-6*time.Minute).Unix(), 10), Sign(newKey, "m", now.Add(-6*time.Minute), body), body, ErrStale},
		{"future", "m", strconv.FormatInt(now.Add(6*time.Minute).Unix(), 10), Sign(newKey, "m", now.Add(6*time.Minute), body), body, ErrStale},
		{"only v2 signatures", "m", ts, "v2,abc", body, ErrNoSignature},
		{"garbage base64", "m", ts, "v1,!!!", body, ErrBadSignature},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := v.Verify(tt.id, tt.ts, tt.sig, tt.body)
			if !errors.Is(err, tt.want) {
				t.Fatalf("Verify = %v, want %v", err, tt.want)
			}
		})
	}
}

func TestParseSecret(t *testing.T) {
	if _, err := ParseSecret("whsec_short"); err == nil {
		t.Fatal("want error for a short or malformed secret")
	}
	if _, err := ParseSecret("whsec_" + "%%%"); err == nil {
		t.Fatal("want error for non-base64")
	}
}
