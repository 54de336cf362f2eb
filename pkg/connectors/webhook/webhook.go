// Package webhook is the generic HTTP connector: every operation is a signed POST of a small
// JSON document to one URL the target's owner runs (an integration platform, a script in
// front of an in-house system). Requests are signed with Standard Webhooks (the
// webhook-id, webhook-timestamp and webhook-signature headers; see pkg/webhook), so the
// receiver can check they come from tenure and are fresh.
//
//	connectors:
//	  - name: rostering
//	    type: webhook
//	    config:
//	      url: https://rostering.example.org/tenure
//	      secret: {env: TENURE_ROSTERING_WEBHOOK_SECRET}   # whsec_...
//	      headers:                                        # optional, e.g. an API gateway key
//	        x-api-key: {env: TENURE_ROSTERING_API_KEY}
//	      ca_file: /etc/tenure/rostering-ca.pem           # optional
//
// # The protocol
//
// Request body (application/json):
//
//	{"operation": "get" | "create" | "disable" | "enable" | "delete" | "grant" | "revoke" |
//	              "revoke_sessions" | "revoke_credentials" | "list",
//	 "account": {"id": "...", "username": "..."},      // all but create and list
//	 "spec": {"worker_id", "username", "email", "given_name", "family_name",
//	          "display_name", "entitlements": [...]},   // create
//	 "entitlement": "...",                             // grant, revoke
//	 "page_token": "..."}                              // list
//
// The answer is 2xx with, for get and create, {"account": {"id", "username", "email",
// "display_name", "state": "enabled" | "disabled", "entitlements": [...]}} and, for list,
// {"accounts": [...], "next_page_token": "..."}; other operations may answer with an empty
// body. Get is the read-back: tenure confirms every change with it. revoke_sessions and
// revoke_credentials (invalidate the account's passwords, API tokens and keys; called on every
// leaver's disable, after it) must leave the account's state as it is; a receiver that cannot
// do them answers 501, and the disable still counts.
//
// Status codes are error classes: 404 means the account does not exist (deleting an absent
// account succeeds); 429 and 503 are retried, after Retry-After (seconds or an HTTP date) when
// given; 408, 425, 500, 502 and 504 are retried; 501 means the receiver does not support the
// operation; 409 on create means the account exists (tenure reads it); any other 4xx is
// permanent and goes to an operator.
package webhook

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"time"
	"unicode"

	"github.com/tenure-dev/tenure/pkg/connector"
	"github.com/tenure-dev/tenure/pkg/events"
	"github.com/tenure-dev/tenure/pkg/webhook"
)

// TypeName is the registered connector type.
const TypeName = "webhook"

// Config is the webhook connector's configuration.
type Config struct {
	// URL receives every operation. It must be https, except to a loopback address.
	URL string `yaml:"url"`
	// Secret is the Standard Webhooks signing secret ("whsec_" + base64, at least 24 bytes).
	Secret connector.Secret `yaml:"secret"`
	// Headers are sent with every request (e.g. an API gateway key); values are secrets.
	Headers map[string]connector.Secret `yaml:"headers"`
	// CAFile is a PEM file of CAs to trust instead of the system roots.
	CAFile string `yaml:"ca_file"`
}

func init() { connector.Register(TypeName, open) }

func open(_ context.Context, decode func(any) error) (connector.Connector, error) {
	var cfg Config
	if err := decode(&cfg); err != nil {
		return nil, err
	}
	return New(cfg)
}

// maxResponse bounds what tenure reads from a receiver.
const maxResponse = 1 << 20

// New validates cfg and returns the connector. Every problem is reported at once.
func New(cfg Config) (*Connector, error) {
	var errs []error
	bad := func(format string, args ...any) { errs = append(errs, fmt.Errorf(format, args...)) }
	u, err := url.Parse(cfg.URL)
	switch {
	case cfg.URL == "":
		bad("url: is required")
	case err != nil:
		bad("url: not a URL")
	case u.User != nil:
		bad("url: must not hold credentials; use headers with a secret")
	case u.Scheme == "https" && u.Host != "":
	case u.Scheme == "http" && isLoopback(u.Hostname()):
	case u.Scheme == "http":
		bad("url: must be https (plain http only to a loopback address, for tests)")
	default:
		bad("url: %q is not an http(s) URL", u.Redacted())
	}
	var key []byte
	if cfg.Secret.IsZero() {
		bad("secret: is required (a Standard Webhooks secret, whsec_...)")
	} else if s, err := cfg.Secret.Resolve(); err != nil {
		bad("secret: %v", err)
	} else if key, err = webhook.ParseSecret(s); err != nil {
		bad("secret (%s): %v", cfg.Secret.Source(), err)
	}
	headers := http.Header{}
	for name, v := range cfg.Headers {
		if name == "" || strings.ContainsFunc(name, func(r rune) bool { return r > unicode.MaxASCII || r <= ' ' || r == ':' }) {
			bad("headers: %q is not a header name", name)
			continue
		}
		switch strings.ToLower(name) {
		case webhook.HeaderID, webhook.HeaderTimestamp, webhook.HeaderSignature, "content-type", "host", "content-length":
			bad("headers: %s is set by tenure", name)
			continue
		}
		s, err := v.Resolve()
		if err != nil {
			bad("headers: %s: %v", name, err)
			continue
		}
		headers.Set(name, s)
	}
	transport := connector.HTTPTransport()
	if cfg.CAFile != "" {
		pem, err := os.ReadFile(cfg.CAFile)
		pool := x509.NewCertPool()
		switch {
		case err != nil:
			bad("ca_file: %v", err)
		case !pool.AppendCertsFromPEM(pem):
			bad("ca_file: %s holds no PEM certificate", cfg.CAFile)
		default:
			transport.TLSClientConfig = &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
		}
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	return &Connector{url: cfg.URL, key: key, headers: headers, client: &http.Client{
		Transport: transport,
		// A redirect would re-send a signed body somewhere nobody configured.
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}}, nil
}

func isLoopback(host string) bool {
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// Connector calls the configured URL for each operation.
type Connector struct {
	url     string
	key     []byte
	headers http.Header
	client  *http.Client
}

var (
	_ connector.Creator            = (*Connector)(nil)
	_ connector.Disabler           = (*Connector)(nil)
	_ connector.Enabler            = (*Connector)(nil)
	_ connector.Deleter            = (*Connector)(nil)
	_ connector.EntitlementGranter = (*Connector)(nil)
	_ connector.SessionRevoker     = (*Connector)(nil)
	_ connector.Lister             = (*Connector)(nil)
	_ connector.CredentialRevoker  = (*Connector)(nil)
)

// Request is the JSON body of every call.
type Request struct {
	Operation   string      `json:"operation"`
	Account     *AccountRef `json:"account,omitempty"`
	Spec        *Spec       `json:"spec,omitempty"`
	Entitlement string      `json:"entitlement,omitempty"`
	PageToken   string      `json:"page_token,omitempty"`
}

// AccountRef names an account: by id when tenure knows it, else by username.
type AccountRef struct {
	ID       string `json:"id,omitempty"`
	Username string `json:"username,omitempty"`
}

// Spec is the account to create.
type Spec struct {
	WorkerID     string   `json:"worker_id"`
	Username     string   `json:"username"`
	Email        string   `json:"email,omitempty"`
	GivenName    string   `json:"given_name,omitempty"`
	FamilyName   string   `json:"family_name,omitempty"`
	DisplayName  string   `json:"display_name,omitempty"`
	Entitlements []string `json:"entitlements,omitempty"`
}

// Account is an account in an answer.
type Account struct {
	ID           string   `json:"id"`
	Username     string   `json:"username"`
	Email        string   `json:"email,omitempty"`
	DisplayName  string   `json:"display_name,omitempty"`
	State        string   `json:"state"`
	Entitlements []string `json:"entitlements,omitempty"`
}

// Response is the JSON answer to get, create and list.
type Response struct {
	Account       *Account  `json:"account,omitempty"`
	Accounts      []Account `json:"accounts,omitempty"`
	NextPageToken string    `json:"next_page_token,omitempty"`
}

// Operations.
const (
	OpGet               = "get"
	OpCreate            = "create"
	OpDisable           = "disable"
	OpEnable            = "enable"
	OpDelete            = "delete"
	OpGrant             = "grant"
	OpRevoke            = "revoke"
	OpRevokeSessions    = "revoke_sessions"
	OpRevokeCredentials = "revoke_credentials"
	OpList              = "list"
)

func refOf(r connector.AccountRef) *AccountRef { return &AccountRef{ID: r.ID, Username: r.Username} }

// ToAccount converts an answer's account.
func (a Account) ToAccount() connector.Account {
	st := connector.StateUnknown
	switch a.State {
	case "enabled":
		st = connector.StateEnabled
	case "disabled":
		st = connector.StateDisabled
	}
	return connector.Account{ID: a.ID, Username: a.Username, Email: a.Email, DisplayName: a.DisplayName, State: st, Entitlements: a.Entitlements}
}

// FromAccount converts an account for an answer (for receivers written in Go).
func FromAccount(a connector.Account) Account {
	st := ""
	switch a.State {
	case connector.StateEnabled:
		st = "enabled"
	case connector.StateDisabled:
		st = "disabled"
	}
	return Account{ID: a.ID, Username: a.Username, Email: a.Email, DisplayName: a.DisplayName, State: st, Entitlements: a.Entitlements}
}

// do sends one signed call and decodes a 2xx answer into out (if not nil).
func (c *Connector) do(ctx context.Context, req Request, out *Response) error {
	body, err := json.Marshal(req)
	if err != nil {
		return connector.Permanent(fmt.Errorf("webhook %s: encode: %w", req.Operation, err))
	}
	hr, err := http.NewRequestWithContext(ctx, http.MethodPost, c.url, bytes.NewReader(body))
	if err != nil {
		return connector.Permanent(fmt.Errorf("webhook %s: %w", req.Operation, err))
	}
	for k, v := range c.headers {
		hr.Header[k] = v
	}
	now := time.Now()
	id := "tenure_" + events.NewID() // fresh per call: a retry is a new delivery
	hr.Header.Set("content-type", "application/json")
	hr.Header.Set(webhook.HeaderID, id)
	hr.Header.Set(webhook.HeaderTimestamp, strconv.FormatInt(now.Unix(), 10))
	hr.Header.Set(webhook.HeaderSignature, webhook.Sign(c.key, id, now, body))
	res, err := c.client.Do(hr)
	if err != nil {
		// Network trouble and timeouts: try again. url.Error names the URL; it holds no
		// credentials (New rejects userinfo).
		return connector.Retryable(fmt.Errorf("webhook %s: %w", req.Operation, err))
	}
	defer res.Body.Close()
	data, err := io.ReadAll(io.LimitReader(res.Body, maxResponse+1))
	if err != nil {
		return connector.Retryable(fmt.Errorf("webhook %s: read answer: %w", req.Operation, err))
	}
	if res.StatusCode >= 200 && res.StatusCode < 300 {
		if out == nil {
			return nil
		}
		if len(data) > maxResponse {
			return connector.Permanent(fmt.Errorf("webhook %s: answer larger than %d bytes", req.Operation, maxResponse))
		}
		dec := json.NewDecoder(bytes.NewReader(data))
		dec.DisallowUnknownFields()
		if err := dec.Decode(out); err != nil {
			return connector.Permanent(fmt.Errorf("webhook %s: answer is not the expected JSON: %w", req.Operation, err))
		}
		return nil
	}
	return classify(req.Operation, res, data, now)
}

// StatusError is a receiver's answer outside 2xx, classified by classify.
type StatusError struct {
	Op   string
	Code int
	// Excerpt is the start of the answer's body, for the operator.
	Excerpt string
}

func (e *StatusError) Error() string {
	return fmt.Sprintf("webhook %s: HTTP %d%s", e.Op, e.Code, e.Excerpt)
}

// classify maps an HTTP error status onto an error class.
func classify(op string, res *http.Response, body []byte, now time.Time) error {
	err := &StatusError{Op: op, Code: res.StatusCode, Excerpt: excerpt(body)}
	switch res.StatusCode {
	case http.StatusNotFound:
		return connector.NotFound(err)
	case http.StatusTooManyRequests, http.StatusServiceUnavailable:
		return connector.RetryableAfter(err, retryAfter(res.Header.Get("Retry-After"), now))
	case http.StatusRequestTimeout, http.StatusTooEarly, http.StatusInternalServerError, http.StatusBadGateway, http.StatusGatewayTimeout:
		return connector.Retryable(err)
	case http.StatusNotImplemented:
		return fmt.Errorf("%w: %w", connector.ErrUnsupported, err)
	}
	if res.StatusCode >= 400 && res.StatusCode < 500 {
		return connector.Permanent(err)
	}
	// Other 5xx and anything unexpected (a 3xx we do not follow): retry, the safe default.
	return connector.Retryable(err)
}

// retryAfter parses Retry-After: delay-seconds or an HTTP date. Zero when absent or invalid.
func retryAfter(v string, now time.Time) time.Duration {
	if v == "" {
		return 0
	}
	if s, err := strconv.Atoi(strings.TrimSpace(v)); err == nil && s >= 0 {
		return time.Duration(s) * time.Second
	}
	if t, err := http.ParseTime(v); err == nil && t.After(now) {
		return t.Sub(now)
	}
	return 0
}

// excerpt is the start of an error answer, one line, for the operator.
func excerpt(body []byte) string {
	s := strings.Join(strings.Fields(string(body)), " ")
	if s == "" {
		return ""
	}
	if len(s) > 200 {
		s = s[:200] + "…"
	}
	return ": " + strings.Map(func(r rune) rune {
		if unicode.IsPrint(r) {
			return r
		}
		return -1
	}, s)
}

func (c *Connector) account(ctx context.Context, req Request) (connector.Account, error) {
	var res Response
	if err := c.do(ctx, req, &res); err != nil {
		return connector.Account{}, err
	}
	if res.Account == nil {
		return connector.Account{}, connector.Permanent(fmt.Errorf("webhook %s: answer has no account", req.Operation))
	}
	return res.Account.ToAccount(), nil
}

// GetAccount reads the account back.
func (c *Connector) GetAccount(ctx context.Context, ref connector.AccountRef) (connector.Account, error) {
	return c.account(ctx, Request{Operation: OpGet, Account: refOf(ref)})
}

// CreateAccount creates the account; a 409 means it exists, and it is read back unchanged.
func (c *Connector) CreateAccount(ctx context.Context, spec connector.AccountSpec) (connector.Account, error) {
	a, err := c.account(ctx, Request{Operation: OpCreate, Spec: &Spec{WorkerID: spec.WorkerID, Username: spec.Username, Email: spec.Email,
		GivenName: spec.GivenName, FamilyName: spec.FamilyName, DisplayName: spec.DisplayName, Entitlements: spec.Entitlements}})
	if isConflict(err) {
		return c.GetAccount(ctx, connector.AccountRef{Username: spec.Username})
	}
	return a, err
}

func isConflict(err error) bool {
	var se *StatusError
	return errors.As(err, &se) && se.Code == http.StatusConflict
}

// DisableAccount disables the account.
func (c *Connector) DisableAccount(ctx context.Context, ref connector.AccountRef) error {
	return c.do(ctx, Request{Operation: OpDisable, Account: refOf(ref)}, nil)
}

// EnableAccount enables the account.
func (c *Connector) EnableAccount(ctx context.Context, ref connector.AccountRef) error {
	return c.do(ctx, Request{Operation: OpEnable, Account: refOf(ref)}, nil)
}

// DeleteAccount deletes the account; an absent one is fine.
func (c *Connector) DeleteAccount(ctx context.Context, ref connector.AccountRef) error {
	err := c.do(ctx, Request{Operation: OpDelete, Account: refOf(ref)}, nil)
	if errors.Is(err, connector.ErrNotFound) {
		return nil
	}
	return err
}

// GrantEntitlement grants an entitlement.
func (c *Connector) GrantEntitlement(ctx context.Context, ref connector.AccountRef, e string) error {
	return c.do(ctx, Request{Operation: OpGrant, Account: refOf(ref), Entitlement: e}, nil)
}

// RevokeEntitlement revokes an entitlement.
func (c *Connector) RevokeEntitlement(ctx context.Context, ref connector.AccountRef, e string) error {
	return c.do(ctx, Request{Operation: OpRevoke, Account: refOf(ref), Entitlement: e}, nil)
}

// RevokeSessions ends the account's sessions; a receiver that cannot answers 501.
func (c *Connector) RevokeSessions(ctx context.Context, ref connector.AccountRef) error {
	return c.do(ctx, Request{Operation: OpRevokeSessions, Account: refOf(ref)}, nil)
}

// RevokeCredentials invalidates the account's credentials; a receiver that cannot answers
// 501 (an error matching connector.ErrUnsupported).
func (c *Connector) RevokeCredentials(ctx context.Context, ref connector.AccountRef) error {
	return c.do(ctx, Request{Operation: OpRevokeCredentials, Account: refOf(ref)}, nil)
}

// ListAccounts lists one page.
func (c *Connector) ListAccounts(ctx context.Context, pageToken string) ([]connector.Account, string, error) {
	var res Response
	if err := c.do(ctx, Request{Operation: OpList, PageToken: pageToken}, &res); err != nil {
		return nil, "", err
	}
	out := make([]connector.Account, 0, len(res.Accounts))
	for _, a := range res.Accounts {
		out = append(out, a.ToAccount())
	}
	return out, res.NextPageToken, nil
}
