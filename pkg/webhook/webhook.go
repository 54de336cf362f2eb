// Package webhook signs and verifies Standard Webhooks (https://www.standardwebhooks.com):
// HMAC-SHA256 over "<webhook-id>.<webhook-timestamp>.<body>", sent as "v1,<base64>" in the
// webhook-signature header, with a timestamp tolerance against replays. A source may have
// several secrets at once so they can be rotated without dropping deliveries.
package webhook

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"
)

// Header names.
const (
	HeaderID        = "webhook-id"
	HeaderTimestamp = "webhook-timestamp"
	HeaderSignature = "webhook-signature"
)

// DefaultTolerance is how far a timestamp may be from now.
const DefaultTolerance = 5 * time.Minute

const secretPrefix = "whsec_"

// Errors, each with a message fit for the HTTP answer.
var (
	ErrMissingHeader = errors.New("missing Standard Webhooks header")
	ErrBadTimestamp  = errors.New("webhook-timestamp is not a Unix time in seconds")
	ErrStale         = errors.New("webhook-timestamp outside the tolerance window")
	ErrNoSignature   = errors.New("webhook-signature has no v1 signature")
	ErrBadSignature  = errors.New("no webhook-signature matches a configured secret")
)

// Skew says how far a timestamp is from now, given d = now - timestamp: "10m0s old" or
// "10m0s in the future".
func Skew(d time.Duration) string {
	if d < 0 {
		return (-d).Round(time.Second).String() + " in the future"
	}
	return d.Round(time.Second).String() + " old"
}

// ParseSecret decodes a "whsec_<base64>" secret (the prefix is optional).
func ParseSecret(s string) ([]byte, error) {
	key, err := base64.StdEncoding.DecodeString(strings.TrimPrefix(strings.TrimSpace(s), secretPrefix))
	if err != nil {
		return nil, fmt.Errorf("webhook: secret is not base64 after %q: %w", secretPrefix, err)
	}
	if len(key) < 24 {
		return nil, fmt.Errorf("webhook: secret has %d bytes; use at least 24", len(key))
	}
	return key, nil
}

// NewSecret returns a fresh random secret in "whsec_" form.
func NewSecret() string {
	b := make([]byte, 32)
	rand.Read(b)
	return secretPrefix + base64.StdEncoding.EncodeToString(b)
}

// Sign returns the webhook-signature header value for a delivery.
func Sign(key []byte, id string, ts time.Time, body []byte) string {
	return "v1," + base64.StdEncoding.EncodeToString(mac(key, id, strconv.FormatInt(ts.Unix(), 10), body))
}

func mac(key []byte, id, ts string, body []byte) []byte {
	m := hmac.New(sha256.New, key)
	m.Write([]byte(id))
	m.Write([]byte{'.'})
	m.Write([]byte(ts))
	m.Write([]byte{'.'})
	m.Write(body)
	return m.Sum(nil)
}

// Verifier checks deliveries against a source's secrets.
type Verifier struct {
	Keys      [][]byte
	Tolerance time.Duration
	Now       func() time.Time
}

// Verify checks the headers and signature of a delivery. It returns the parsed timestamp.
func (v *Verifier) Verify(id, timestamp, signature string, body []byte) (time.Time, error) {
	switch {
	case id == "":
		return time.Time{}, fmt.Errorf("%w %s", ErrMissingHeader, HeaderID)
	case timestamp == "":
		return time.Time{}, fmt.Errorf("%w %s", ErrMissingHeader, HeaderTimestamp)
	case signature == "":
		return time.Time{}, fmt.Errorf("%w %s", ErrMissingHeader, HeaderSignature)
	}
	secs, err := strconv.ParseInt(timestamp, 10, 64)
	if err != nil {
		return time.Time{}, ErrBadTimestamp
	}
	ts := time.Unix(secs, 0)
	now := time.Now()
	if v.Now != nil {
		now = v.Now()
	}
	tol := v.Tolerance
	if tol == 0 {
		tol = DefaultTolerance
	}
	if d := now.Sub(ts); d > tol || d < -tol {
		return ts, fmt.Errorf("%w (%s, tolerance %s)", ErrStale, Skew(d), tol)
	}
	found := false
	for _, part := range strings.Fields(signature) {
		ver, sig, ok := strings.Cut(part, ",")
		if !ok || ver != "v1" {
			continue
		}
		found = true
		got, err := base64.StdEncoding.DecodeString(sig)
		if err != nil {
			continue
		}
		for _, key := range v.Keys {
			if hmac.Equal(got, mac(key, id, timestamp, body)) {
				return ts, nil
			}
		}
	}
	if !found {
		return ts, ErrNoSignature
	}
	return ts, ErrBadSignature
}
