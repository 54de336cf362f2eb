package scim

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/tenure-dev/tenure/pkg/connector"
)

const (
	mediaType = "application/scim+json"
	// maxBody bounds what is read of a response: a list page of a few hundred users is far
	// below it, and a target that streams without end does not exhaust memory.
	maxBody = 16 << 20
	// maxErrorDetail bounds how much of a target's error text goes into an error message.
	maxErrorDetail = 300

	schemaUser    = "urn:ietf:params:scim:schemas:core:2.0:User"
	schemaPatchOp = "urn:ietf:params:scim:api:messages:2.0:PatchOp"
	schemaError   = "urn:ietf:params:scim:api:messages:2.0:Error"
)

// client speaks SCIM's HTTP binding to one service provider. It holds the token only in the
// auth closure, so printing a client or a connector (%+v) cannot reveal it.
type client struct {
	base *url.URL
	http *http.Client
	auth func() (string, error)
}

// statusError is a SCIM error answer (RFC 7644 3.12). It never holds request headers, so it
// cannot carry the token.
type statusError struct {
	Method   string
	Path     string
	Status   int
	ScimType string
	Detail   string
}

func (e *statusError) Error() string {
	msg := fmt.Sprintf("scim: %s %s: %d %s", e.Method, e.Path, e.Status, http.StatusText(e.Status))
	if e.ScimType != "" {
		msg += " (" + e.ScimType + ")"
	}
	if e.Detail != "" {
		msg += ": " + e.Detail
	}
	switch e.Status {
	case http.StatusUnauthorized, http.StatusForbidden:
		msg += " (check the connector's token and its permissions in the target)"
	}
	return msg
}

// do sends one request and decodes a 2xx JSON answer into out (if out is not nil and there is
// a body). Every other outcome is a classified connector error.
func (c *client) do(ctx context.Context, method, path string, query url.Values, body, out any) error {
	u := c.base.JoinPath(path)
	if query != nil {
		u.RawQuery = query.Encode()
	}
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return connector.Permanent(fmt.Errorf("scim: %s %s: encode body: %w", method, path, err))
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, u.String(), rd)
	if err != nil {
		return connector.Permanent(fmt.Errorf("scim: %s %s: %w", method, path, err))
	}
	token, err := c.auth()
	if err != nil {
		// Says where the token should come from, never what it is.
		return connector.Retryable(fmt.Errorf("scim: token: %w", err))
	}
	req.Header.Set("Authorization", "Bearer "+token)
	req.Header.Set("Accept", mediaType+", application/json")
	if body != nil {
		req.Header.Set("Content-Type", mediaType)
	}
	resp, err := c.http.Do(req)
	if err != nil {
		// Network errors, timeouts, a cancelled context: the target may be back soon.
		// *url.Error names the URL (which holds no credentials), not the headers.
		return connector.Retryable(fmt.Errorf("scim: %s %s: %w", method, path, err))
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, maxBody))
	if err != nil {
		return connector.Retryable(fmt.Errorf("scim: %s %s: read answer: %w", method, path, err))
	}
	if resp.StatusCode >= 200 && resp.StatusCode < 300 {
		if out == nil || len(bytes.TrimSpace(data)) == 0 {
			return nil
		}
		if err := json.Unmarshal(data, out); err != nil {
			return connector.Permanent(fmt.Errorf("scim: %s %s: answer is not SCIM JSON: %w", method, path, err))
		}
		return nil
	}
	return classify(&statusError{Method: method, Path: path, Status: resp.StatusCode,
		ScimType: scimType(data), Detail: detail(data)}, resp.Header.Get("Retry-After"))
}

// classify maps an HTTP status onto a connector error kind.
func classify(e *statusError, retryAfter string) error {
	switch s := e.Status; {
	case s == http.StatusTooManyRequests || s == http.StatusServiceUnavailable:
		return connector.RetryableAfter(e, parseRetryAfter(retryAfter, time.Now()))
	case s == http.StatusNotFound:
		return connector.NotFound(e)
	case s == http.StatusRequestTimeout:
		return connector.Retryable(e)
	case s == http.StatusNotImplemented:
		// "Not implemented" does not get better with time; PATCH handles it before this.
		return connector.Permanent(e)
	case s >= 500:
		return connector.RetryableAfter(e, parseRetryAfter(retryAfter, time.Now()))
	default: // 4xx, and anything else a SCIM server has no business answering
		return connector.Permanent(e)
	}
}

// parseRetryAfter reads Retry-After as seconds or an HTTP date (RFC 9110 10.2.3); anything
// else, or a time in the past, is zero (the host's backoff decides).
func parseRetryAfter(v string, now time.Time) time.Duration {
	v = strings.TrimSpace(v)
	if v == "" {
		return 0
	}
	if n, err := strconv.ParseInt(v, 10, 64); err == nil {
		if n <= 0 {
			return 0
		}
		// Cap absurd values: an hour is already longer than any leaver deadline.
		return min(time.Duration(n)*time.Second, time.Hour)
	}
	if t, err := http.ParseTime(v); err == nil {
		if d := t.Sub(now); d > 0 {
			return min(d, time.Hour)
		}
	}
	return 0
}

func scimType(data []byte) string {
	var e struct {
		ScimType string `json:"scimType"`
	}
	_ = json.Unmarshal(data, &e)
	return e.ScimType
}

// detail extracts a SCIM error's detail, or the start of a non-SCIM body, for the message.
func detail(data []byte) string {
	var e struct {
		Detail string `json:"detail"`
	}
	s := ""
	if json.Unmarshal(data, &e) == nil {
		s = e.Detail
	} else {
		s = strings.TrimSpace(string(data))
	}
	s = strings.Map(func(r rune) rune {
		if r < 0x20 || r == 0x7f {
			return ' '
		}
		return r
	}, s)
	if len(s) > maxErrorDetail {
		s = s[:maxErrorDetail] + "…"
	}
	return s
}

func statusOf(err error) int {
	var se *statusError
	if errors.As(err, &se) {
		return se.Status
	}
	return 0
}

// filterString quotes s as a SCIM filter string literal. RFC 7644 3.4.2.2 makes filter
// values JSON strings, so JSON's escaping (quotes, backslashes, control characters) is the
// right one; HTML escaping is left off because it is noise to servers' filter parsers.
func filterString(s string) string {
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false)
	_ = enc.Encode(s) // encoding a string cannot fail
	return strings.TrimSuffix(b.String(), "\n")
}

// eqFilter is `attr eq "value"`.
func eqFilter(attr, value string) string {
	return attr + " eq " + filterString(value)
}
