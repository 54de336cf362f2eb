package intake

import (
	"context"
	"crypto/hmac"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"time"

	"go.opentelemetry.io/contrib/instrumentation/net/http/otelhttp"
)

// hrisClient fetches records from an HRIS API for thin webhook formats: one GET or POST per
// attempt, bounded by the timeout, retried with back-off on network errors, 429 and 5xx.
// Every failure is an ordinary error, which the webhook answers with 503 so the HRIS retries
// the delivery later; nothing is stored.
type hrisClient struct {
	vendor string
	api    APIConfig
	// basic returns the HTTP Basic user and password.
	basic func(APIConfig) (string, string)
	http  *http.Client
	// backoff before retry n (1-based); tests shorten it.
	backoff func(n int) time.Duration
}

// maxAPIBody caps an HRIS API answer.
const maxAPIBody = 4 << 20

// errNotFound is an HRIS answering 404 for a record.
var errNotFound = errors.New("not found")

func newHRISClient(vendor string, api APIConfig, basic func(APIConfig) (string, string)) (*hrisClient, error) {
	u, err := url.Parse(api.BaseURL)
	if api.BaseURL == "" || err != nil || u.Host == "" || (u.Scheme != "https" && u.Scheme != "http") {
		return nil, fmt.Errorf("api.base_url %q is not an http(s) URL; %s webhooks are thin and the record is fetched from the API", api.BaseURL, vendor)
	}
	if api.Token == "" {
		return nil, fmt.Errorf("api.token_env: %s needs an API credential", vendor)
	}
	if api.Timeout <= 0 {
		api.Timeout = DefaultAPITimeout
	}
	if api.Retries < 0 {
		api.Retries = 0
	}
	api.BaseURL = strings.TrimSuffix(api.BaseURL, "/")
	return &hrisClient{
		vendor: vendor, api: api, basic: basic,
		http:    &http.Client{Transport: otelhttp.NewTransport(http.DefaultTransport)},
		backoff: func(n int) time.Duration { return time.Duration(n*n) * 250 * time.Millisecond },
	}, nil
}

// do sends one request (body may be nil) and decodes a 200 JSON answer into out.
func (c *hrisClient) do(ctx context.Context, method, path string, body []byte, out any) error {
	var last error
	for attempt := 0; attempt <= c.api.Retries; attempt++ {
		if attempt > 0 {
			select {
			case <-ctx.Done():
				return fmt.Errorf("%s API %s: %w (after %v)", c.vendor, path, ctx.Err(), last)
			case <-time.After(c.backoff(attempt)):
			}
		}
		retry, err := c.once(ctx, method, path, body, out)
		if err == nil {
			return nil
		}
		last = err
		if !retry {
			break
		}
	}
	return last
}

func (c *hrisClient) once(ctx context.Context, method, path string, body []byte, out any) (retry bool, err error) {
	actx, cancel := context.WithTimeout(ctx, c.api.Timeout)
	defer cancel()
	var rd io.Reader
	if body != nil {
		rd = strings.NewReader(string(body))
	}
	req, err := http.NewRequestWithContext(actx, method, c.api.BaseURL+path, rd)
	if err != nil {
		return false, fmt.Errorf("%s API: %w", c.vendor, err)
	}
	req.Header.Set("Accept", "application/json")
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	user, pass := c.basic(c.api)
	req.SetBasicAuth(user, pass)
	resp, err := c.http.Do(req)
	if err != nil {
		return true, fmt.Errorf("%s API %s %s: %w", c.vendor, method, path, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, maxAPIBody+1))
	if err != nil {
		return true, fmt.Errorf("%s API %s %s: reading the answer: %w", c.vendor, method, path, err)
	}
	switch {
	case resp.StatusCode == http.StatusOK:
	case resp.StatusCode == http.StatusTooManyRequests || resp.StatusCode >= 500:
		return true, fmt.Errorf("%s API %s %s: %s", c.vendor, method, path, resp.Status)
	case resp.StatusCode == http.StatusNotFound:
		return false, fmt.Errorf("%s API %s %s: %w (%s)", c.vendor, method, path, errNotFound, resp.Status)
	default:
		// 401/403 and the like: a configuration problem; retrying now will not help, but the
		// HRIS retrying later (after an operator fixes the credential) will.
		return false, fmt.Errorf("%s API %s %s: %s", c.vendor, method, path, resp.Status)
	}
	if len(b) > maxAPIBody {
		return false, fmt.Errorf("%s API %s %s: answer larger than %d bytes", c.vendor, method, path, maxAPIBody)
	}
	if err := json.Unmarshal(b, out); err != nil {
		return false, fmt.Errorf("%s API %s %s: the answer is not the expected JSON: %w", c.vendor, method, path, err)
	}
	return false, nil
}

// secretsMatch reports whether mac(secret) equals sig for any secret.
func secretsMatch(secrets [][]byte, sig []byte, mac func(key []byte) []byte) bool {
	for _, k := range secrets {
		if hmac.Equal(sig, mac(k)) {
			return true
		}
	}
	return false
}

func rawSecrets(s []string) [][]byte {
	out := make([][]byte, len(s))
	for i, v := range s {
		out[i] = []byte(strings.TrimSpace(v))
	}
	return out
}

func clockOf(sc SourceConfig) func() time.Time {
	if sc.now != nil {
		return sc.now
	}
	return time.Now
}

// checkSkew rejects a vendor timestamp outside the source's tolerance.
func checkSkew(header string, ts, now time.Time, tol time.Duration) error {
	if tol <= 0 {
		tol = DefaultTolerance
	}
	if d := now.Sub(ts); d > tol || d < -tol {
		return &InputError{Status: http.StatusUnauthorized, Field: header,
			Message: fmt.Sprintf("%s outside the tolerance window (%s from now, tolerance %s)", header, d.Round(time.Second), tol)}
	}
	return nil
}

func unauthorized(header, format string, args ...any) *InputError {
	return &InputError{Status: http.StatusUnauthorized, Field: header, Message: fmt.Sprintf(format, args...)}
}
