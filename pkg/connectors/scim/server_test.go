package scim_test

import (
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"strings"
	"sync"
	"testing"

	"github.com/tenure-dev/tenure/pkg/connectors/scim/scimtest"
)

const testToken = "s3cr3t-test-token"

// scimServer is one running test server process (scimtest).
type scimServer struct{ *scimtest.Server }

// startServer starts test/scimserver on a free port with the given environment
// (PATCH_UNSUPPORTED=1, IGNORE_PATCH=1, FAIL=429:1:7, ...) and stops it when t ends.
func startServer(t *testing.T, env ...string) *scimServer {
	t.Helper()
	return &scimServer{scimtest.Start(t, testToken, env...)}
}

// call sends a request to the server directly, as an administrator of the target would.
func (s *scimServer) call(t *testing.T, method, path string, body any, out any) int {
	t.Helper()
	return s.Call(t, method, path, body, out)
}

// group creates a group in the target and returns its id.
func (s *scimServer) group(t *testing.T, displayName string) string {
	t.Helper()
	var g struct{ ID string }
	if code := s.call(t, "POST", "Groups", map[string]any{
		"schemas":     []string{"urn:ietf:params:scim:schemas:core:2.0:Group"},
		"displayName": displayName,
	}, &g); code != 201 {
		t.Fatalf("create group %q: %d", displayName, code)
	}
	return g.ID
}

// rawUser reads a user straight from the target, not through the connector.
func (s *scimServer) rawUser(t *testing.T, id string) map[string]any {
	t.Helper()
	var u map[string]any
	if code := s.call(t, "GET", "Users/"+url.PathEscape(id), nil, &u); code != 200 {
		t.Fatalf("GET Users/%s: %d", id, code)
	}
	return u
}

// proxy sits between the connector and the server: it records every request and lets a test
// answer some requests itself.
type proxy struct {
	URL string
	mu  sync.Mutex
	log []string // "METHOD /path -> status"
	// hook, if set, may answer a request itself (returning true).
	hook func(w http.ResponseWriter, r *http.Request) bool
}

func newProxy(t *testing.T, s *scimServer) *proxy {
	t.Helper()
	target, err := url.Parse(s.URL)
	if err != nil {
		t.Fatal(err)
	}
	p := &proxy{}
	rp := &httputil.ReverseProxy{Rewrite: func(r *httputil.ProxyRequest) {
		r.SetURL(&url.URL{Scheme: target.Scheme, Host: target.Host})
	}}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		rec := &statusRecorder{ResponseWriter: w, status: 200}
		p.mu.Lock()
		hook := p.hook
		p.mu.Unlock()
		if hook == nil || !hook(rec, r) {
			rp.ServeHTTP(rec, r)
		}
		p.mu.Lock()
		p.log = append(p.log, fmt.Sprintf("%s %s -> %d", r.Method, strings.TrimPrefix(r.URL.Path, target.Path), rec.status))
		p.mu.Unlock()
	}))
	t.Cleanup(srv.Close)
	p.URL = srv.URL + target.Path
	return p
}

func (p *proxy) setHook(h func(w http.ResponseWriter, r *http.Request) bool) {
	p.mu.Lock()
	p.hook = h
	p.mu.Unlock()
}

// take returns the requests seen since the last call.
func (p *proxy) take() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	l := p.log
	p.log = nil
	return l
}

type statusRecorder struct {
	http.ResponseWriter
	status int
}

func (r *statusRecorder) WriteHeader(code int) {
	r.status = code
	r.ResponseWriter.WriteHeader(code)
}
