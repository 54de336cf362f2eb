// Package scimtest starts the SCIM 2.0 test server (test/scimserver: the scimmy packages from
// npm behind a small Node program) for tests: the SCIM connector's own and the end-to-end
// ones.
package scimtest

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// Server is one running server process.
type Server struct {
	URL   string // base URL, .../scim/v2
	Token string // the bearer token it accepts
}

var (
	npmOnce sync.Once
	npmErr  error
	dirOnce sync.Once
	dir     string
	dirErr  error
)

// serverDir finds test/scimserver by walking up from the working directory (a test runs in
// its package's folder, somewhere below the repository root).
func serverDir() (string, error) {
	dirOnce.Do(func() {
		wd, err := os.Getwd()
		if err != nil {
			dirErr = err
			return
		}
		for d := wd; ; d = filepath.Dir(d) {
			if _, err := os.Stat(filepath.Join(d, "test", "scimserver", "server.mjs")); err == nil {
				dir = filepath.Join(d, "test", "scimserver")
				return
			}
			if filepath.Dir(d) == d {
				dirErr = fmt.Errorf("scimtest: no test/scimserver/server.mjs above %s", wd)
				return
			}
		}
	})
	return dir, dirErr
}

// ensureModules runs `npm ci` in the server's folder when node_modules is missing, so a
// fresh checkout can run the tests (CI runs it beforehand).
func ensureModules(dir string) error {
	npmOnce.Do(func() {
		if _, err := os.Stat(filepath.Join(dir, "node_modules", "scimmy-routers")); err == nil {
			return
		}
		npm, err := exec.LookPath("npm")
		if err != nil {
			npmErr = fmt.Errorf("npm is not installed (apt-get install nodejs npm), and %s/node_modules is missing", dir)
			return
		}
		cmd := exec.Command(npm, "ci", "--no-audit", "--no-fund")
		cmd.Dir = dir
		if out, err := cmd.CombinedOutput(); err != nil {
			npmErr = fmt.Errorf("npm ci in %s: %v\n%s", dir, err, out)
		}
	})
	return npmErr
}

// Start starts the server on a free port, accepting token, with env switching its behaviour
// (PATCH_UNSUPPORTED=1, IGNORE_PATCH=1, FAIL=429:1:7, ...), and stops it when the test ends.
func Start(tb testing.TB, token string, env ...string) *Server {
	tb.Helper()
	node, err := exec.LookPath("node")
	if err != nil {
		tb.Fatal("node is not installed: apt-get install nodejs npm, then npm ci in test/scimserver")
	}
	dir, err := serverDir()
	if err == nil {
		err = ensureModules(dir)
	}
	if err != nil {
		tb.Fatal(err)
	}
	cmd := exec.Command(node, "server.mjs")
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), append([]string{"PORT=0", "SCIM_TOKEN=" + token}, env...)...)
	stdin, err := cmd.StdinPipe() // the server exits when this closes, even if we are killed
	if err != nil {
		tb.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		tb.Fatal(err)
	}
	var stderr lockedBuffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() {
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
		return &Server{URL: u, Token: token}
	case <-time.After(20 * time.Second):
		tb.Fatal(errors.New("SCIM test server did not start: " + stderr.String()))
	}
	return nil
}

// Call sends a request to the server directly, as the target's administrator would, decodes
// the answer into out (when given) and returns the status code.
func (s *Server) Call(tb testing.TB, method, path string, body any, out any) int {
	tb.Helper()
	var rd io.Reader
	if body != nil {
		b, _ := json.Marshal(body)
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequest(method, s.URL+"/"+path, rd)
	if err != nil {
		tb.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+s.Token)
	req.Header.Set("Content-Type", "application/scim+json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		tb.Fatal(err)
	}
	defer resp.Body.Close()
	data, _ := io.ReadAll(resp.Body)
	if out != nil && len(data) > 0 {
		if err := json.Unmarshal(data, out); err != nil {
			tb.Fatalf("%s %s: %v: %s", method, path, err, data)
		}
	}
	return resp.StatusCode
}

// lockedBuffer collects a process's stderr while the test may read it.
type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}
