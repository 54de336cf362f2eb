package ssf

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/tenure-dev/tenure/pkg/authn"
	"github.com/tenure-dev/tenure/pkg/pgstore"
)

// Paths of the transmitter's endpoints, below the issuer.
const (
	PathConfiguration = "/.well-known/ssf-configuration"
	PathJWKS          = "/ssf/jwks.json"
	PathStreams       = "/ssf/streams"
	PathStatus        = "/ssf/status"
	PathAddSubject    = "/ssf/subjects:add"
	PathRemoveSubject = "/ssf/subjects:remove"
	PathVerify        = "/ssf/verify"
	PathPoll          = "/ssf/poll/" // + stream_id
)

// maxBody bounds a management request.
const maxBody = 64 << 10

// Handler serves the discovery document, the JWKS, the stream management API and the poll
// endpoint. Mount it at "/.well-known/ssf-configuration" and "/ssf/" of the issuer's host.
func (t *Transmitter) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET "+t.wellKnownPath(), t.serveConfiguration)
	mux.HandleFunc("GET "+t.issuer.Path+PathJWKS, t.serveJWKS)
	mux.HandleFunc(t.issuer.Path+PathStreams, t.authed(t.serveStreams))
	mux.HandleFunc(t.issuer.Path+PathStatus, t.authed(t.serveStatus))
	mux.HandleFunc("POST "+t.issuer.Path+PathAddSubject, t.authed(t.serveAddSubject))
	mux.HandleFunc("POST "+t.issuer.Path+PathRemoveSubject, t.authed(t.serveRemoveSubject))
	mux.HandleFunc("POST "+t.issuer.Path+PathVerify, t.authed(t.serveVerify))
	mux.HandleFunc("POST "+t.issuer.Path+PathPoll+"{stream_id}", t.authed(t.servePoll))
	return mux
}

// wellKnownPath puts /.well-known/ssf-configuration between the host and the issuer's path
// (SSF 1.0 §7.2).
func (t *Transmitter) wellKnownPath() string { return PathConfiguration + t.issuer.Path }

// URL is where receivers find the transmitter: its discovery document.
func (t *Transmitter) URL() string {
	u := *t.issuer
	u.Path = t.wellKnownPath()
	return u.String()
}

func (t *Transmitter) serveConfiguration(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, map[string]any{
		"spec_version":               "1_0",
		"issuer":                     t.Issuer(),
		"jwks_uri":                   t.endpoint(PathJWKS),
		"delivery_methods_supported": []string{MethodPush, MethodPoll},
		"configuration_endpoint":     t.endpoint(PathStreams),
		"status_endpoint":            t.endpoint(PathStatus),
		"add_subject_endpoint":       t.endpoint(PathAddSubject),
		"remove_subject_endpoint":    t.endpoint(PathRemoveSubject),
		"verification_endpoint":      t.endpoint(PathVerify),
		"critical_subject_members":   []string{"user"},
		"authorization_schemes":      []map[string]string{{"spec_urn": "urn:ietf:rfc:6750"}},
		"default_subjects":           t.cfg.DefaultSubjects,
	})
}

func (t *Transmitter) serveJWKS(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Cache-Control", "max-age=300")
	writeJSON(w, http.StatusOK, t.jwks)
}

// apiError is a 4xx or 5xx answer with an OAuth-style body naming what is wrong.
type apiError struct {
	status      int
	code, descr string
}

func (e *apiError) Error() string { return e.descr }

func badRequest(format string, args ...any) error {
	return &apiError{http.StatusBadRequest, "invalid_request", fmt.Sprintf(format, args...)}
}

var errNoStream = &apiError{http.StatusNotFound, "not_found", "no stream with this stream_id for this receiver"}

type handler func(w http.ResponseWriter, r *http.Request, p authn.Principal) error

// authed authenticates the bearer token (security role) and turns errors into answers.
func (t *Transmitter) authed(h handler) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Cache-Control", "no-store")
		tok, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
		if !ok || tok == "" {
			w.Header().Set("WWW-Authenticate", `Bearer realm="tenure-ssf"`)
			writeJSON(w, http.StatusUnauthorized, errBody("invalid_token", "an Authorization: Bearer token is required"))
			return
		}
		p, ok := t.auth.Authenticate(tok)
		if !ok {
			w.Header().Set("WWW-Authenticate", `Bearer realm="tenure-ssf", error="invalid_token"`)
			writeJSON(w, http.StatusUnauthorized, errBody("invalid_token", "the bearer token is not valid"))
			return
		}
		if !p.Has(authn.RoleSecurity) {
			writeJSON(w, http.StatusForbidden, errBody("insufficient_scope", "the SSF API needs a token with the security role"))
			return
		}
		r.Body = http.MaxBytesReader(w, r.Body, maxBody)
		if err := h(w, r, p); err != nil {
			var ae *apiError
			if errors.As(err, &ae) {
				writeJSON(w, ae.status, errBody(ae.code, ae.descr))
				return
			}
			if r.Context().Err() == nil {
				t.log.ErrorContext(r.Context(), "SSF API", "method", r.Method, "path", r.URL.Path, "err", err)
			}
			writeJSON(w, http.StatusInternalServerError, errBody("server_error", "internal error"))
		}
	}
}

func errBody(code, descr string) map[string]string {
	return map[string]string{"error": code, "error_description": descr}
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	enc := json.NewEncoder(w)
	enc.SetEscapeHTML(false)
	_ = enc.Encode(v)
}

// decode reads one strict JSON object into v: unknown members and trailing data are errors.
func decode(r *http.Request, v any) error {
	if ct := r.Header.Get("Content-Type"); ct != "" && !strings.HasPrefix(ct, "application/json") {
		return &apiError{http.StatusUnsupportedMediaType, "invalid_request", "Content-Type must be application/json"}
	}
	b, err := io.ReadAll(r.Body)
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			return &apiError{http.StatusRequestEntityTooLarge, "invalid_request", fmt.Sprintf("body larger than %d bytes", maxBody)}
		}
		return badRequest("read body: %v", err)
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return badRequest("malformed JSON: %v", err)
	}
	if dec.More() {
		return badRequest("malformed JSON: data after the object")
	}
	return nil
}

// streamConfig is the stream configuration as JSON (SSF 1.0 §8.1.1).
type streamConfig struct {
	StreamID                string          `json:"stream_id,omitempty"`
	Iss                     string          `json:"iss,omitempty"`
	Aud                     json.RawMessage `json:"aud,omitempty"`
	EventsSupported         []string        `json:"events_supported,omitempty"`
	EventsRequested         *[]string       `json:"events_requested,omitempty"`
	EventsDelivered         []string        `json:"events_delivered,omitempty"`
	Delivery                *delivery       `json:"delivery,omitempty"`
	MinVerificationInterval *int            `json:"min_verification_interval,omitempty"`
	Description             *string         `json:"description,omitempty"`
	InactivityTimeout       *int            `json:"inactivity_timeout,omitempty"`
}

type delivery struct {
	Method              string `json:"method"`
	EndpointURL         string `json:"endpoint_url,omitempty"`
	AuthorizationHeader string `json:"authorization_header,omitempty"`
}

func (t *Transmitter) configOf(s *stream) streamConfig {
	aud, _ := json.Marshal(s.Aud)
	mvi := int(t.cfg.MinVerificationInterval / time.Second)
	c := streamConfig{
		StreamID: s.ID, Iss: t.Issuer(), Aud: aud, EventsSupported: EventsSupported,
		EventsDelivered: s.eventsDelivered(), MinVerificationInterval: &mvi,
		// The authorization header is write-only: it is the receiver's secret.
		Delivery: &delivery{Method: s.Method, EndpointURL: s.EndpointURL},
	}
	if s.EventsRequested != nil {
		c.EventsRequested = &s.EventsRequested
	}
	if s.Description != "" {
		c.Description = &s.Description
	}
	if c.EventsDelivered == nil {
		c.EventsDelivered = []string{}
	}
	return c
}

// checkTransmitterSupplied: a receiver may echo transmitter-supplied values, which must then
// match (SSF 1.0 §8.1.1.3).
func (t *Transmitter) checkTransmitterSupplied(c *streamConfig, s *stream) error {
	if c.Iss != "" && c.Iss != t.Issuer() {
		return badRequest("iss %q does not match this transmitter (%s)", c.Iss, t.Issuer())
	}
	if len(c.Aud) > 0 && s != nil {
		var one string
		var many []string
		switch {
		case json.Unmarshal(c.Aud, &one) == nil:
			many = []string{one}
		case json.Unmarshal(c.Aud, &many) == nil:
		default:
			return badRequest("aud must be a string or an array of strings")
		}
		if strings.Join(many, "\x00") != strings.Join(s.Aud, "\x00") {
			return badRequest("aud is transmitter-supplied and cannot be changed")
		}
	}
	if c.EventsSupported != nil && strings.Join(c.EventsSupported, " ") != strings.Join(EventsSupported, " ") {
		return badRequest("events_supported is transmitter-supplied and does not match")
	}
	if c.MinVerificationInterval != nil && *c.MinVerificationInterval != int(t.cfg.MinVerificationInterval/time.Second) {
		return badRequest("min_verification_interval is transmitter-supplied and does not match")
	}
	if c.InactivityTimeout != nil {
		return badRequest("inactivity_timeout is not supported: tenure's streams do not expire")
	}
	return nil
}

// applyReceiverSupplied sets s's receiver-supplied values from c. With replace (PUT), a
// missing value is cleared; otherwise (POST, PATCH) it is left alone.
func (t *Transmitter) applyReceiverSupplied(c *streamConfig, s *stream, replace bool) error {
	if c.EventsRequested != nil {
		for i, e := range *c.EventsRequested {
			if u, err := url.Parse(e); err != nil || e == "" || u.Scheme == "" {
				return badRequest("events_requested[%d] %q is not a URI", i, e)
			}
		}
		s.EventsRequested = append([]string{}, *c.EventsRequested...)
	} else if replace {
		s.EventsRequested = nil
	}
	if c.Description != nil {
		if len(*c.Description) > 1024 {
			return badRequest("description is longer than 1024 characters")
		}
		s.Description = *c.Description
	} else if replace {
		s.Description = ""
	}
	if c.Delivery == nil {
		if replace || s.Method == "" {
			return badRequest("delivery is required: {\"method\": %q, \"endpoint_url\": ...} or {\"method\": %q}", MethodPush, MethodPoll)
		}
		return nil
	}
	d := c.Delivery
	switch d.Method {
	case MethodPush:
		u, err := url.Parse(d.EndpointURL)
		switch {
		case d.EndpointURL == "":
			return badRequest("delivery.endpoint_url is required for push delivery")
		case err != nil || u.Host == "" || u.Fragment != "":
			return badRequest("delivery.endpoint_url %q is not an absolute URL", d.EndpointURL)
		case u.Scheme != "https" && !(t.cfg.AllowHTTP && u.Scheme == "http"):
			return badRequest("delivery.endpoint_url must use https")
		case u.User != nil:
			return badRequest("delivery.endpoint_url must not hold credentials: use delivery.authorization_header")
		}
		if strings.ContainsAny(d.AuthorizationHeader, "\r\n") {
			return badRequest("delivery.authorization_header must be one line")
		}
		s.Method, s.EndpointURL, s.AuthHeader = MethodPush, d.EndpointURL, d.AuthorizationHeader
	case MethodPoll:
		if d.EndpointURL != "" && d.EndpointURL != t.pollURL(s.ID) {
			return badRequest("delivery.endpoint_url is transmitter-supplied for poll delivery")
		}
		if d.AuthorizationHeader != "" {
			return badRequest("delivery.authorization_header applies to push delivery only")
		}
		s.Method, s.EndpointURL, s.AuthHeader = MethodPoll, t.pollURL(s.ID), ""
	case "":
		return badRequest("delivery.method is required (%s for push, %s for poll)", MethodPush, MethodPoll)
	default:
		return badRequest("delivery.method %q is not supported (%s for push, %s for poll)", d.Method, MethodPush, MethodPoll)
	}
	return nil
}

func (t *Transmitter) pollURL(id string) string { return t.endpoint(PathPoll + id) }

func (t *Transmitter) serveStreams(w http.ResponseWriter, r *http.Request, p authn.Principal) error {
	ctx := r.Context()
	switch r.Method {
	case http.MethodGet:
		id := r.URL.Query().Get("stream_id")
		if id == "" {
			ss, err := listStreams(ctx, t.pool, p.Name)
			if err != nil {
				return err
			}
			out := make([]streamConfig, 0, len(ss))
			for _, s := range ss {
				out = append(out, t.configOf(s))
			}
			writeJSON(w, http.StatusOK, out)
			return nil
		}
		s, err := t.ownStream(ctx, t.pool, p, id)
		if err != nil {
			return err
		}
		writeJSON(w, http.StatusOK, t.configOf(s))
		return nil
	case http.MethodPost:
		var c streamConfig
		if err := decode(r, &c); err != nil {
			return err
		}
		if c.StreamID != "" {
			return badRequest("stream_id is assigned by the transmitter; do not send it when creating a stream")
		}
		if len(c.Aud) > 0 {
			return badRequest("aud is transmitter-supplied: it is the receiver's token name")
		}
		if err := t.checkTransmitterSupplied(&c, nil); err != nil {
			return err
		}
		s := &stream{ID: newJTI(), Owner: p.Name, Aud: []string{p.Name}, Status: "enabled"}
		if err := t.applyReceiverSupplied(&c, s, false); err != nil {
			return err
		}
		if err := pgstore.InTx(ctx, t.pool, func(tx pgx.Tx) error { return insertStream(ctx, tx, s) }); err != nil {
			return err
		}
		t.log.InfoContext(ctx, "SSF stream created", "stream_id", s.ID, "receiver", p.Name, "method", s.Method)
		writeJSON(w, http.StatusCreated, t.configOf(s))
		return nil
	case http.MethodPatch, http.MethodPut:
		var c streamConfig
		if err := decode(r, &c); err != nil {
			return err
		}
		if c.StreamID == "" {
			return badRequest("stream_id is required")
		}
		var out *stream
		err := pgstore.InTx(ctx, t.pool, func(tx pgx.Tx) error {
			s, err := t.ownStream(ctx, tx, p, c.StreamID, "FOR UPDATE")
			if err != nil {
				return err
			}
			if err := t.checkTransmitterSupplied(&c, s); err != nil {
				return err
			}
			if err := t.applyReceiverSupplied(&c, s, r.Method == http.MethodPut); err != nil {
				return err
			}
			out = s
			return updateStream(ctx, tx, s)
		})
		if err != nil {
			return err
		}
		writeJSON(w, http.StatusOK, t.configOf(out))
		return nil
	case http.MethodDelete:
		id := r.URL.Query().Get("stream_id")
		if id == "" {
			return badRequest("stream_id query parameter is required")
		}
		tag, err := t.pool.Exec(ctx, "DELETE FROM ssf.streams WHERE stream_id = $1 AND owner = $2", id, p.Name)
		if err != nil {
			return err
		}
		if tag.RowsAffected() == 0 {
			return errNoStream
		}
		t.log.InfoContext(ctx, "SSF stream deleted", "stream_id", id, "receiver", p.Name)
		w.WriteHeader(http.StatusNoContent)
		return nil
	default:
		w.Header().Set("Allow", "GET, POST, PATCH, PUT, DELETE")
		return &apiError{http.StatusMethodNotAllowed, "invalid_request", r.Method + " is not allowed here"}
	}
}

// ownStream loads the caller's stream (lock: optional "FOR UPDATE").
func (t *Transmitter) ownStream(ctx context.Context, q querier, p authn.Principal, id string, lock ...string) (*stream, error) {
	if id == "" {
		return nil, badRequest("stream_id is required")
	}
	sql := "SELECT " + streamColumns + " FROM ssf.streams WHERE stream_id = $1 AND owner = $2 " + strings.Join(lock, " ")
	s, err := scanStream(q.QueryRow(ctx, sql, id, p.Name))
	if errors.Is(err, errNotFound) {
		return nil, errNoStream
	}
	return s, err
}

type statusBody struct {
	StreamID string `json:"stream_id"`
	Status   string `json:"status"`
	Reason   string `json:"reason,omitempty"`
}

func (t *Transmitter) serveStatus(w http.ResponseWriter, r *http.Request, p authn.Principal) error {
	ctx := r.Context()
	switch r.Method {
	case http.MethodGet:
		s, err := t.ownStream(ctx, t.pool, p, r.URL.Query().Get("stream_id"))
		if err != nil {
			return err
		}
		writeJSON(w, http.StatusOK, statusBody{StreamID: s.ID, Status: s.Status, Reason: s.Reason})
		return nil
	case http.MethodPost:
		var b statusBody
		if err := decode(r, &b); err != nil {
			return err
		}
		if b.Status != "enabled" && b.Status != "paused" && b.Status != "disabled" {
			return badRequest("status must be enabled, paused or disabled, not %q", b.Status)
		}
		var out *stream
		err := pgstore.InTx(ctx, t.pool, func(tx pgx.Tx) error {
			s, err := t.ownStream(ctx, tx, p, b.StreamID, "FOR UPDATE")
			if err != nil {
				return err
			}
			s.Status, s.Reason = b.Status, b.Reason
			if s.Status == "disabled" {
				// A disabled stream holds nothing (SSF 1.0 §8.1.2.1).
				if _, err := tx.Exec(ctx, "DELETE FROM ssf.sets WHERE stream_id = $1 AND delivered_at IS NULL", s.ID); err != nil {
					return err
				}
			}
			out = s
			return updateStream(ctx, tx, s)
		})
		if err != nil {
			return err
		}
		t.queued.fire() // an enabled stream may have held SETs
		writeJSON(w, http.StatusOK, statusBody{StreamID: out.ID, Status: out.Status, Reason: out.Reason})
		return nil
	default:
		w.Header().Set("Allow", "GET, POST")
		return &apiError{http.StatusMethodNotAllowed, "invalid_request", r.Method + " is not allowed here"}
	}
}

type subjectBody struct {
	StreamID string          `json:"stream_id"`
	Subject  json.RawMessage `json:"subject"`
	Verified *bool           `json:"verified,omitempty"`
}

func (t *Transmitter) serveAddSubject(w http.ResponseWriter, r *http.Request, p authn.Principal) error {
	return t.changeSubject(w, r, p, true)
}

func (t *Transmitter) serveRemoveSubject(w http.ResponseWriter, r *http.Request, p authn.Principal) error {
	return t.changeSubject(w, r, p, false)
}

// changeSubject adds (include) or removes a subject. With default_subjects ALL a removal is
// kept as an exclusion; with NONE it deletes the inclusion.
func (t *Transmitter) changeSubject(w http.ResponseWriter, r *http.Request, p authn.Principal, include bool) error {
	ctx := r.Context()
	var b subjectBody
	if err := decode(r, &b); err != nil {
		return err
	}
	if !include && b.Verified != nil {
		return badRequest("verified applies to adding a subject only")
	}
	sub, key, err := parseSubject(b.Subject)
	if err != nil {
		return badRequest("%v", err)
	}
	if _, err := t.ownStream(ctx, t.pool, p, b.StreamID); err != nil {
		return err
	}
	verified := b.Verified == nil || *b.Verified
	if include || t.cfg.DefaultSubjects == "ALL" {
		_, err = t.pool.Exec(ctx, `INSERT INTO ssf.subjects (stream_id, subject_key, subject, included, verified) VALUES ($1, $2, $3, $4, $5)
			ON CONFLICT (stream_id, subject_key) DO UPDATE SET subject = EXCLUDED.subject, included = EXCLUDED.included, verified = EXCLUDED.verified, changed_at = now()`,
			b.StreamID, key, sub, include, verified && include)
	} else {
		_, err = t.pool.Exec(ctx, "DELETE FROM ssf.subjects WHERE stream_id = $1 AND subject_key = $2", b.StreamID, key)
	}
	if err != nil {
		return err
	}
	if include {
		w.WriteHeader(http.StatusOK)
	} else {
		w.WriteHeader(http.StatusNoContent)
	}
	return nil
}

type verifyBody struct {
	StreamID string `json:"stream_id"`
	State    string `json:"state,omitempty"`
}

// serveVerify queues a verification event on the stream, at most once per
// MinVerificationInterval (429 otherwise).
func (t *Transmitter) serveVerify(w http.ResponseWriter, r *http.Request, p authn.Principal) error {
	ctx := r.Context()
	var b verifyBody
	if err := decode(r, &b); err != nil {
		return err
	}
	if len(b.State) > 1024 {
		return badRequest("state is longer than 1024 characters")
	}
	err := pgstore.InTx(ctx, t.pool, func(tx pgx.Tx) error {
		s, err := t.ownStream(ctx, tx, p, b.StreamID, "FOR UPDATE")
		if err != nil {
			return err
		}
		if s.Status == "disabled" {
			return &apiError{http.StatusConflict, "invalid_request", "the stream is disabled"}
		}
		if s.LastVerify != nil && time.Since(*s.LastVerify) < t.cfg.MinVerificationInterval {
			w.Header().Set("Retry-After", fmt.Sprint(int((t.cfg.MinVerificationInterval-time.Since(*s.LastVerify))/time.Second)+1))
			return &apiError{http.StatusTooManyRequests, "too_many_requests", fmt.Sprintf("one verification per %s", t.cfg.MinVerificationInterval)}
		}
		payload := map[string]any{}
		if b.State != "" {
			payload["state"] = b.State
		}
		jti := newJTI()
		token, err := t.sign(s.Aud, jti, "", Subject{"format": FormatOpaque, "id": s.ID}, EventVerification, payload)
		if err != nil {
			return err
		}
		if _, err := queueSET(ctx, tx, s.ID, jti, EventVerification, token); err != nil {
			return err
		}
		_, err = tx.Exec(ctx, "UPDATE ssf.streams SET last_verification_at = now() WHERE stream_id = $1", s.ID)
		return err
	})
	if err != nil {
		return err
	}
	t.queued.fire()
	w.WriteHeader(http.StatusNoContent)
	return nil
}
