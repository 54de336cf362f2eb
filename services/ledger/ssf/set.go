package ssf

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"time"

	"github.com/google/uuid"

	eventsv1 "github.com/tenure-dev/tenure/proto/tenure/events/v1"
)

// CredentialTypeAPIToken is the CAEP credential_type tenure sends for revoked API tokens and
// keys: CAEP allows a type agreed between transmitter and receiver besides its own list.
const CredentialTypeAPIToken = "api-token"

// eventOf maps a revocation to its SSF event type and payload; ok is false for kinds that
// have no SSF event (worker terminated, grant revoked, case completed: they stay on the NATS
// stream and WatchRevocations).
func eventOf(r *eventsv1.Revocation) (typ string, payload map[string]any, ok bool) {
	at := r.GetOccurredAt().AsTime().Unix()
	where := r.GetSystem()
	if where == "" {
		where = r.GetConnector()
	}
	switch r.GetKind() {
	case eventsv1.RevocationKind_REVOCATION_KIND_ACCOUNT_DISABLED:
		// RISC's reasons (hijacking, bulk-account) do not fit a leaver: none is given.
		return EventAccountDisabled, map[string]any{}, true
	case eventsv1.RevocationKind_REVOCATION_KIND_SESSION_REVOKED:
		return EventSessionRevoked, map[string]any{
			"event_timestamp":   at,
			"initiating_entity": "policy",
			"reason_admin":      map[string]string{"en": fmt.Sprintf("Workforce access removed by tenure: sessions on %s revoked", where)},
		}, true
	case eventsv1.RevocationKind_REVOCATION_KIND_CREDENTIALS_REVOKED:
		return EventCredentialChange, map[string]any{
			"event_timestamp":   at,
			"initiating_entity": "policy",
			"credential_type":   CredentialTypeAPIToken,
			"change_type":       "revoke",
			"reason_admin":      map[string]string{"en": fmt.Sprintf("Workforce access removed by tenure: credentials on %s revoked", where)},
		}, true
	}
	return "", nil, false
}

// setJTI derives a SET's jti from the stream and the revocation, so queueing the same
// revocation twice stores one SET.
func setJTI(streamID, revocationID, eventType string) string {
	h := sha256.Sum256([]byte(streamID + "\x00" + revocationID + "\x00" + eventType))
	return hex.EncodeToString(h[:16])
}

// claims are a SET's JWT claims (RFC 8417 §2.2, SSF 1.0 §4).
type claims struct {
	Iss    string                    `json:"iss"`
	Aud    any                       `json:"aud"`
	Iat    int64                     `json:"iat"`
	Jti    string                    `json:"jti"`
	Txn    string                    `json:"txn,omitempty"`
	SubID  Subject                   `json:"sub_id"`
	Events map[string]map[string]any `json:"events"`
}

// sign builds and signs one SET with the given events for the stream's audience.
func (t *Transmitter) sign(aud []string, jti, txn string, sub Subject, eventType string, payload map[string]any) (string, error) {
	var a any = aud
	if len(aud) == 1 {
		a = aud[0]
	}
	b, err := json.Marshal(claims{Iss: t.Issuer(), Aud: a, Iat: time.Now().Unix(), Jti: jti, Txn: txn, SubID: sub,
		Events: map[string]map[string]any{eventType: payload}})
	if err != nil {
		return "", err
	}
	jws, err := t.signer.Sign(b)
	if err != nil {
		return "", err
	}
	return jws.CompactSerialize()
}

func newJTI() string { return uuid.Must(uuid.NewV7()).String() }
