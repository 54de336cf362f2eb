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

	"github.com/tenure-dev/tenure/pkg/webhook"
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

// apiError is a failed HRIS API call, with its cause category for the webhook's answer and
// the operator: the HRIS could not be reached, timed out, or answered an HTTP error status.
type apiError struct {
	vendor   string
	workerID string // the employee fetched, when the adapter says
	status   int    // the HTTP status the API answered, 0 when there was none
	timeout  bool   // no answer within api.timeout
	// badAnswer: a 200 whose body is not what the API documents.
	badAnswer bool
	err       error
}

func (e *apiError) Error() string { return e.err.Error() }

// fetchedFor names the employee a failed fetch was for, so the finding can name them.
func fetchedFor(err error, workerID string) error {
	var ae *apiError
	if errors.As(err, &ae) {
		ae.workerID = workerID
	}
	return err
}
func (e *apiError) Unwrap() error { return e.err }

// cause says what went wrong in words without secrets or URLs with query strings: the
// category and the status.
func (e *apiError) cause() string {
	switch {
	case e.status == http.StatusUnauthorized || e.status == http.StatusForbidden:
		return fmt.Sprintf("the %s API refused tenure's credential (HTTP %d)", e.vendor, e.status)
	case e.status == http.StatusNotFound:
		return fmt.Sprintf("the %s API does not know the employee (HTTP 404)", e.vendor)
	case e.status != 0:
		return fmt.Sprintf("the %s API answered HTTP %d", e.vendor, e.status)
	case e.badAnswer:
		return fmt.Sprintf("the %s API's answer is not the JSON it documents", e.vendor)
	case e.timeout:
		return fmt.Sprintf("the %s API timed out", e.vendor)
	}
	return fmt.Sprintf("the %s API is unreachable", e.vendor)
}

// credentialRefused: 401 or 403, which only an operator can fix.
func (e *apiError) credentialRefused() bool {
	return e.status == http.StatusUnauthorized || e.status == http.StatusForbidden
}

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
				return &apiError{vendor: c.vendor, timeout: true, err: fmt.Errorf("%s API %s: %w (after %v)", c.vendor, path, ctx.Err(), last)}
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
		return false, &apiError{vendor: c.vendor, err: fmt.Errorf("%s API: %w", c.vendor, err)}
	}
	req.Header.Set("Accept", "application/json")
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	user, pass := c.basic(c.api)
	req.SetBasicAuth(user, pass)
	fail := func(status int, err error) *apiError {
		timeout := errors.Is(err, context.DeadlineExceeded) || errors.Is(actx.Err(), context.DeadlineExceeded)
		return &apiError{vendor: c.vendor, status: status, timeout: timeout, err: err}
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return true, fail(0, fmt.Errorf("%s API %s %s: %w", c.vendor, method, path, err))
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, maxAPIBody+1))
	if err != nil {
		return true, fail(0, fmt.Errorf("%s API %s %s: reading the answer: %w", c.vendor, method, path, err))
	}
	switch {
	case resp.StatusCode == http.StatusOK:
	case resp.StatusCode == http.StatusTooManyRequests || resp.StatusCode >= 500:
		return true, fail(resp.StatusCode, fmt.Errorf("%s API %s %s: %s", c.vendor, method, path, resp.Status))
	case resp.StatusCode == http.StatusNotFound:
		return false, fail(resp.StatusCode, fmt.Errorf("%s API %s %s: %w (%s)", c.vendor, method, path, errNotFound, resp.Status))
	default:
		// 401/403 and the like: a configuration problem; retrying now will not help, but the
		// HRIS retrying later (after an operator fixes the credential) will.
		return false, fail(resp.StatusCode, fmt.Errorf("%s API %s %s: %s", c.vendor, method, path, resp.Status))
	}
	if len(b) > maxAPIBody {
		return false, fail(0, fmt.Errorf("%s API %s %s: answer larger than %d bytes", c.vendor, method, path, maxAPIBody))
	}
	if err := json.Unmarshal(b, out); err != nil {
		return false, &apiError{vendor: c.vendor, badAnswer: true, err: fmt.Errorf("%s API %s %s: the answer is not the expected JSON: %w", c.vendor, method, path, err)}
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
			Message: fmt.Sprintf("%s outside the tolerance window (%s, tolerance %s)", header, webhook.Skew(d), tol)}
	}
	return nil
}

func unauthorized(header, format string, args ...any) *InputError {
	return &InputError{Status: http.StatusUnauthorized, Field: header, Message: fmt.Sprintf(format, args...)}
}
