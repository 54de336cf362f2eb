package scim

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/tenure-dev/tenure/pkg/connector"
)

func TestFilterString(t *testing.T) {
	tests := []struct{ in, want string }{
		{`alice`, `"alice"`},
		{`o"neil`, `"o\"neil"`},
		{`back\slash`, `"back\\slash"`},
		{"tab\there", `"tab\there"`},
		{`<&>`, `"<&>"`},
		{`üñí`, `"üñí"`},
	}
	for _, tt := range tests {
		if got := filterString(tt.in); got != tt.want {
			t.Errorf("filterString(%q) = %s, want %s", tt.in, got, tt.want)
		}
	}
	if got := eqFilter("userName", `a"b`); got != `userName eq "a\"b"` {
		t.Errorf("eqFilter = %s", got)
	}
}

func TestParseRetryAfter(t *testing.T) {
	now := time.Date(2026, 11, 23, 10, 0, 0, 0, time.UTC)
	tests := []struct {
		in   string
		want time.Duration
	}{
		{"", 0},
		{"7", 7 * time.Second},
		{" 120 ", 2 * time.Minute},
		{"0", 0},
		{"-3", 0},
		{"999999", time.Hour},
		{now.Add(90 * time.Second).Format(http.TimeFormat), 90 * time.Second},
		{now.Add(-time.Minute).Format(http.TimeFormat), 0},
		{"soon", 0},
	}
	for _, tt := range tests {
		if got := parseRetryAfter(tt.in, now); got != tt.want {
			t.Errorf("parseRetryAfter(%q) = %v, want %v", tt.in, got, tt.want)
		}
	}
}

func TestClassify(t *testing.T) {
	tests := []struct {
		status int
		want   connector.ErrorKind
	}{
		{400, connector.KindPermanent},
		{401, connector.KindPermanent},
		{403, connector.KindPermanent},
		{404, connector.KindNotFound},
		{408, connector.KindRetryable},
		{409, connector.KindPermanent},
		{429, connector.KindRetryable},
		{500, connector.KindRetryable},
		{501, connector.KindPermanent},
		{502, connector.KindRetryable},
		{503, connector.KindRetryable},
		{504, connector.KindRetryable},
	}
	for _, tt := range tests {
		err := classify(&statusError{Method: "GET", Path: "Users", Status: tt.status}, "")
		if k := connector.KindOf(err); k != tt.want {
			t.Errorf("%d: kind %v, want %v", tt.status, k, tt.want)
		}
	}
	if d := connector.RetryAfterOf(classify(&statusError{Status: 429}, "5")); d != 5*time.Second {
		t.Errorf("429 Retry-After: %v", d)
	}
}

func TestConfig(t *testing.T) {
	t.Setenv("TENURE_TEST_SCIM_TOKEN", "hunter2")
	c, err := connector.Open(context.Background(), TypeName, []byte("base_url: https://scim.example.test/v2/\ntoken: {env: TENURE_TEST_SCIM_TOKEN}\ntimeout: 5s\n"))
	if err != nil {
		t.Fatal(err)
	}
	sc := c.(*Connector)
	if sc.c.http.Timeout != 5*time.Second || sc.pageSize != defaultPageSize || sc.userAttr != "userName" {
		t.Errorf("defaults: timeout %v page %d attr %q", sc.c.http.Timeout, sc.pageSize, sc.userAttr)
	}
	if s := fmt.Sprintf("%+v %#v", sc, sc); strings.Contains(s, "hunter2") {
		t.Errorf("printing the connector leaks the token: %s", s)
	}

	tests := []struct {
		name, config, want string
	}{
		{"unknown field", "base_url: https://x\ntoken: t\ntokn: t\n", `line 3: unknown field "tokn"`},
		{"no base_url", "token: t\n", "base_url is required"},
		{"no token", "base_url: https://x\n", "token is required"},
		{"relative", "base_url: /scim\ntoken: t\n", "absolute"},
		{"ftp", "base_url: ftp://x\ntoken: t\n", "absolute http(s)"},
		{"credentials in url", "base_url: https://u:hunter2@x\ntoken: t\n", "must not contain credentials"},
		{"plain http", "base_url: http://scim.example.test\ntoken: t\n", "plain http"},
		{"query", "base_url: https://x/?a=b\ntoken: t\n", "query"},
		{"bad timeout", "base_url: https://x\ntoken: t\ntimeout: soon\n", "line 3"},
		{"page size", "base_url: https://x\ntoken: t\npage_size: 5000\n", "page_size"},
		{"attr externalId", "base_url: https://x\ntoken: t\nuser_filter_attribute: externalId\n", "worker id"},
		{"attr path", "base_url: https://x\ntoken: t\nuser_filter_attribute: emails.value\n", "top-level"},
		{"group without entitlement", "base_url: https://x\ntoken: t\ngroups: [{id: g}]\n", "entitlement is required"},
		{"group twice", "base_url: https://x\ntoken: t\ngroups: [{entitlement: a}, {entitlement: a}]\n", "twice"},
		{"group id and name", "base_url: https://x\ntoken: t\ngroups: [{entitlement: a, id: g, display_name: A}]\n", "not both"},
		{"unset env", "base_url: https://x\ntoken: {env: TENURE_TEST_UNSET_TOKEN}\n", "TENURE_TEST_UNSET_TOKEN is not set"},
		{"unknown group field", "base_url: https://x\ntoken: t\ngroups: [{entitlement: a, name: b}]\n", `unknown field "name"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := connector.Open(context.Background(), TypeName, []byte(tt.config))
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("error = %v, want %q", err, tt.want)
			}
			if strings.Contains(err.Error(), "hunter2") {
				t.Errorf("error leaks a secret: %v", err)
			}
		})
	}
	// Loopback may be plain http (tests, a sidecar); elsewhere it takes an explicit opt-in.
	for _, cfg := range []string{
		"base_url: http://127.0.0.1:8080/scim\ntoken: t\n",
		"base_url: http://localhost/scim\ntoken: t\n",
		"base_url: http://scim.internal/scim\ntoken: t\nallow_insecure_http: true\n",
	} {
		if _, err := connector.Open(context.Background(), TypeName, []byte(cfg)); err != nil {
			t.Errorf("%q: %v", cfg, err)
		}
	}
}
