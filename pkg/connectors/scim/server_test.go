package scim_test

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// serverDir is the scimmy-based test server (test/scimserver at the repository root).
var serverDir = filepath.Join("..", "..", "..", "test", "scimserver")

const testToken = "s3cr3t-test-token"

var npmOnce sync.Once
var npmErr error

// ensureModules runs `npm ci` in the server's folder when node_modules is missing, so a
// fresh checkout can run the tests (CI runs it beforehand).
func ensureModules(t *testing.T) {
	t.Helper()
	npmOnce.Do(func() {
		if _, err := os.Stat(filepath.Join(serverDir, "node_modules", "scimmy-routers")); err == nil {
			return
		}
		npm, err := exec.LookPath("npm")
		if err != nil {
			npmErr = fmt.Errorf("npm is not installed (apt-get install nodejs npm), and %s/node_modules is missing", serverDir)
			return
		}
		cmd := exec.Command(npm, "ci", "--no-audit", "--no-fund")
		cmd.Dir = serverDir
		if out, err := cmd.CombinedOutput(); err != nil {
			npmErr = fmt.Errorf("npm ci in %s: %v\n%s", serverDir, err, out)
		}
	})
	if npmErr != nil {
		t.Fatal(npmErr)
	}
}

// scimServer is one running test server process.
type scimServer struct {
	URL string // base URL, .../scim/v2
}

// startServer starts test/scimserver/server.mjs on a free port with the given environment
// (PATCH_UNSUPPORTED=1, IGNORE_PATCH=1, FAIL=429:1:7, ...) and stops it when t ends.
func startServer(t *testing.T, env ...string) *scimServer {
	t.Helper()
	node, err := exec.LookPath("node")
	if err != nil {
		t.Fatal("node is not installed: apt-get install nodejs npm, then npm ci in test/scimserver")
	}
	ensureModules(t)
	cmd := exec.Command(node, "server.mjs")
	cmd.Dir = serverDir
	cmd.Env = append(os.Environ(), append([]string{"PORT=0", "SCIM_TOKEN=" + testToken}, env...)...)
	stdin, err := cmd.StdinPipe() // the server exits when this closes, even if we are killed
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		stdin.Close()
		cmd.Process.Kill()
		cmd.Wait()
	})
	ready := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			if u, ok := strings.CutPrefix(sc.Text(), "listening "); ok {
				ready <- u
				break
			}
		}
		io.Copy(io.Discard, stdout)
	}()
	select {
	case u := <-ready:
		return &scimServer{URL: u}
	case <-time.After(20 * time.Second):
		t.Fatalf("SCIM test server did not start: %s", stderr.String())
	}
	return nil
}

// call sends a request to the server directly, as an administrator of the target would.
func (s *scimServer) call(t *testing.T, method, path string, body any, out any) int {
	t.Helper()
	var rd io.Reader
	if body != nil {
		b, _ := json.Marshal(body)
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequest(method, s.URL+"/"+path, rd)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+testToken)
	req.Header.Set("Content-Type", "application/scim+json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	data, _ := io.ReadAll(resp.Body)
	if out != nil && len(data) > 0 {
		if err := json.Unmarshal(data, out); err != nil {
			t.Fatalf("%s %s: %v: %s", method, path, err, data)
		}
	}
	return resp.StatusCode
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
