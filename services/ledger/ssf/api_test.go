package ssf_test

import (
	"net/http"
	"strings"
	"testing"

	"github.com/tenure-dev/tenure/pkg/natsx/natstest"
	"github.com/tenure-dev/tenure/pkg/pgtest"
	"github.com/tenure-dev/tenure/services/ledger/ssf"
)

// TestManagementAPIRejectsBadInput: every bad request gets a 4xx that names the problem,
// and nothing is stored.
func TestManagementAPIRejectsBadInput(t *testing.T) {
	e := startEnv(t, ssf.Config{DefaultSubjects: "NONE"}, pgtest.NewDatabase(t), natstest.Start(t), nil)
	var created map[string]any
	if code := e.call("POST", "/ssf/streams", "siem-token", map[string]any{"delivery": map[string]string{"method": "urn:ietf:rfc:8936"}}, &created); code != http.StatusCreated {
		t.Fatalf("create: %d", code)
	}
	id := created["stream_id"].(string)
	push := func(url string) map[string]any {
		return map[string]any{"delivery": map[string]string{"method": "urn:ietf:rfc:8935", "endpoint_url": url}}
	}
	for _, tc := range []struct {
		name, method, path, token string
		body                      any
		code                      int
		says                      string
	}{
		{"no token", "GET", "/ssf/streams", "", nil, 401, "Bearer token is required"},
		{"unknown token", "GET", "/ssf/streams", "nope", nil, 401, "not valid"},
		{"no security role", "GET", "/ssf/streams", "auditor-token", nil, 403, "security role"},
		{"malformed JSON", "POST", "/ssf/streams", "siem-token", `{"delivery":`, 400, "malformed JSON"},
		{"unknown member", "POST", "/ssf/streams", "siem-token", `{"delivery":{"method":"urn:ietf:rfc:8936"},"colour":"red"}`, 400, `unknown field "colour"`},
		{"no delivery", "POST", "/ssf/streams", "siem-token", map[string]any{}, 400, "delivery is required"},
		{"unknown method", "POST", "/ssf/streams", "siem-token", map[string]any{"delivery": map[string]string{"method": "urn:example:carrier-pigeon"}}, 400, "is not supported"},
		{"push without URL", "POST", "/ssf/streams", "siem-token", push(""), 400, "endpoint_url is required"},
		{"relative push URL", "POST", "/ssf/streams", "siem-token", push("/events"), 400, "not an absolute URL"},
		{"credentials in push URL", "POST", "/ssf/streams", "siem-token", push("http://u:p@127.0.0.1:1/events"), 400, "must not hold credentials"},
		{"stream_id on create", "POST", "/ssf/streams", "siem-token", map[string]any{"stream_id": "x", "delivery": map[string]string{"method": "urn:ietf:rfc:8936"}}, 400, "assigned by the transmitter"},
		{"aud on create", "POST", "/ssf/streams", "siem-token", map[string]any{"aud": "me", "delivery": map[string]string{"method": "urn:ietf:rfc:8936"}}, 400, "aud is transmitter-supplied"},
		{"wrong iss", "PATCH", "/ssf/streams", "siem-token", map[string]any{"stream_id": id, "iss": "https://evil.example"}, 400, "does not match"},
		{"event not a URI", "PATCH", "/ssf/streams", "siem-token", map[string]any{"stream_id": id, "events_requested": []string{"account-disabled"}}, 400, "is not a URI"},
		{"another receiver's stream", "GET", "/ssf/streams?stream_id=" + id, "idp-token", nil, 404, "no stream"},
		{"delete another's stream", "DELETE", "/ssf/streams?stream_id=" + id, "idp-token", nil, 404, "no stream"},
		{"bad status", "POST", "/ssf/status", "siem-token", map[string]any{"stream_id": id, "status": "sleeping"}, 400, "enabled, paused or disabled"},
		{"subject without format", "POST", "/ssf/subjects:add", "siem-token", map[string]any{"stream_id": id, "subject": map[string]string{"email": "a@b.example"}}, 400, "subject.format is required"},
		{"bad email", "POST", "/ssf/subjects:add", "siem-token", map[string]any{"stream_id": id, "subject": map[string]string{"format": "email", "email": "not-an-email"}}, 400, "is not an email address"},
		{"unsupported format", "POST", "/ssf/subjects:add", "siem-token", map[string]any{"stream_id": id, "subject": map[string]string{"format": "phone_number", "phone_number": "+1"}}, 400, `"phone_number" is not supported`},
		{"complex without user", "POST", "/ssf/subjects:add", "siem-token", map[string]any{"stream_id": id, "subject": map[string]any{"format": "complex", "tenant": map[string]string{"format": "opaque", "id": "t"}}}, 400, "subject.user is required"},
		{"poll on push-less id", "POST", "/ssf/poll/unknown", "siem-token", map[string]any{}, 404, "no stream"},
		{"poll maxEvents", "POST", "/ssf/poll/" + id, "siem-token", map[string]any{"maxEvents": -1}, 400, "maxEvents"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var out map[string]any
			code := e.call(tc.method, tc.path, tc.token, tc.body, &out)
			if code != tc.code || !strings.Contains(out["error_description"].(string), tc.says) {
				t.Errorf("%d %v, want %d saying %q", code, out, tc.code, tc.says)
			}
		})
	}
	// Nothing was created or changed by the bad requests.
	var list []map[string]any
	if code := e.call("GET", "/ssf/streams", "siem-token", nil, &list); code != 200 || len(list) != 1 || list[0]["events_requested"] != nil {
		t.Errorf("streams after bad requests: %d %v", code, list)
	}
	if code := e.call("GET", "/ssf/streams", "idp-token", nil, &list); code != 200 || len(list) != 0 {
		t.Errorf("idp sees %v", list)
	}
	// Update, replace, status and delete work for the owner.
	var upd map[string]any
	if code := e.call("PATCH", "/ssf/streams", "siem-token", map[string]any{"stream_id": id, "description": "x", "events_requested": []string{"https://schemas.openid.net/secevent/caep/event-type/session-revoked"}}, &upd); code != 200 ||
		upd["description"] != "x" || len(upd["events_delivered"].([]any)) != 1 {
		t.Errorf("PATCH: %d %v", code, upd)
	}
	upd = nil
	if code := e.call("PUT", "/ssf/streams", "siem-token", map[string]any{"stream_id": id, "delivery": map[string]string{"method": "urn:ietf:rfc:8936"}}, &upd); code != 200 ||
		upd["description"] != nil || len(upd["events_delivered"].([]any)) != 3 {
		t.Errorf("PUT: %d %v", code, upd)
	}
	var st map[string]any
	if code := e.call("POST", "/ssf/status", "siem-token", map[string]any{"stream_id": id, "status": "paused", "reason": "maintenance"}, &st); code != 200 || st["status"] != "paused" {
		t.Errorf("status: %d %v", code, st)
	}
	if code := e.call("GET", "/ssf/status?stream_id="+id, "siem-token", nil, &st); code != 200 || st["reason"] != "maintenance" {
		t.Errorf("status: %d %v", code, st)
	}
	if code := e.call("DELETE", "/ssf/streams?stream_id="+id, "siem-token", nil, nil); code != http.StatusNoContent {
		t.Errorf("delete: %d", code)
	}
	if code := e.call("GET", "/ssf/streams?stream_id="+id, "siem-token", nil, nil); code != http.StatusNotFound {
		t.Errorf("deleted stream: %d", code)
	}
}
