package intake

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"mime"
	"net/http"
	"strings"
	"time"

	"go.opentelemetry.io/contrib/instrumentation/net/http/otelhttp"

	"github.com/tenure-dev/tenure/pkg/webhook"
)

// SubjectPrefix is the subject space of the intake's events.
const SubjectPrefix = "tenure.hr"

// maxWebhookIDLen bounds the webhook-id, which becomes part of the event id.
const maxWebhookIDLen = 200

// Handler serves POST /webhooks/{source}. Checks run in this order, each with its own
// answer ({"error": "...", "field": "..."}):
//
//	404 unknown source
//	405 method is not POST
//	415 Content-Type is not application/json
//	413 body over MaxBodyBytes
//	401 Standard Webhooks headers missing or malformed, timestamp outside the tolerance,
//	    or no signature matching a secret of the source (verified over the raw body); formats
//	    with the vendor's own scheme (bamboohr, hibob) check its headers instead
//	400 body is not one JSON value of the source's format (unknown field, bad syntax, ...)
//	422 the event is not valid (missing worker_id, unknown type, bad date, ...)
//	409 the webhook-id was received before with a different body
//	200 {"status":"duplicate","event_id":...} the webhook-id was received before
//	200 {"status":"ignored"} an authentic delivery with nothing for tenure (vendor ping, ...)
//	202 {"status":"accepted","event_id":...,"subject":...,"stream_seq":...}
//	202 {"status":"scheduled","event_id":...,"effective_time":...} held until its effective time
//	202 {"status":"accepted","stale":true,...} older than the registry: recorded, not published
//	422 also: a rescind outside the grace window or of a worker who is not terminated
//	503 JetStream or Postgres unavailable: nothing was stored, the sender should retry
//
// The handler is wrapped in otelhttp, so a trace starts at the webhook (or continues the
// sender's traceparent) and the published event carries it.
func (s *Service) Handler() http.Handler {
	mux := http.NewServeMux()
	// No method in the pattern: an unknown source must answer 404 before the method is checked.
	mux.HandleFunc("/webhooks/{source}", s.serveWebhook)
	mux.HandleFunc("/snapshots/{source}", s.serveSnapshot)
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusNotFound, errorBody{Error: "no such endpoint; webhooks are POST /webhooks/{source}, rosters POST /snapshots/{source}"})
	})
	return otelhttp.NewHandler(mux, "intake.webhook",
		otelhttp.WithSpanNameFormatter(func(_ string, r *http.Request) string {
			if strings.HasPrefix(r.URL.Path, "/snapshots/") {
				return r.Method + " /snapshots/{source}"
			}
			return r.Method + " /webhooks/{source}"
		}))
}

type errorBody struct {
	Error string `json:"error"`
	Field string `json:"field,omitempty"`
}

type acceptedBody struct {
	Status    string `json:"status"`
	EventID   string `json:"event_id"`
	Subject   string `json:"subject,omitempty"`
	StreamSeq uint64 `json:"stream_seq,omitempty"`
	// Stale is true when the event was older than the registry's record and changed nothing:
	// it was recorded in the history, not published.
	Stale bool `json:"stale,omitempty"`
	// DuplicateOf names the original event when this delivery repeated its content under
	// another webhook-id.
	DuplicateOf string `json:"duplicate_of,omitempty"`
	// Effect of an accepted event on the worker: "applied", or "none" with Reason (recorded
	// in the history, nothing published: an event for a worker who has left, say).
	Effect string `json:"effect,omitempty"`
	Reason string `json:"reason,omitempty"`
	// EffectiveTime of a held (status "scheduled") event: it fires then.
	EffectiveTime string `json:"effective_time,omitempty"`
	// Events of a delivery that carried several (BambooHR field-based webhooks).
	Events []acceptedBody `json:"events,omitempty"`
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(code)
	json.NewEncoder(w).Encode(v)
}

// outcome is logged once per request.
type outcome struct {
	status    int
	outcome   string
	webhookID string
	workerID  string
	eventID   string
	reason    string
	err       error
}

func (s *Service) serveWebhook(w http.ResponseWriter, r *http.Request) {
	ctx := r.Context()
	name := r.PathValue("source")
	o := s.handle(w, r, name)
	attrs := []any{"source", clip(name), "outcome", o.outcome, "status", o.status}
	if o.webhookID != "" {
		attrs = append(attrs, "webhook_id", clip(o.webhookID))
	}
	if o.workerID != "" {
		attrs = append(attrs, "worker_id", o.workerID)
	}
	if o.eventID != "" {
		attrs = append(attrs, "event_id", o.eventID)
	}
	if o.reason != "" {
		attrs = append(attrs, "reason", o.reason)
	}
	if o.status >= 500 {
		attrs = append(attrs, "err", o.err)
	}
	s.log.Log(ctx, levelOf(o.status), "webhook", attrs...)
}

func levelOf(status int) slog.Level {
	switch {
	case status >= 500:
		return slog.LevelError
	case status >= 400:
		return slog.LevelWarn
	}
	return slog.LevelInfo
}

// fail answers an error and returns the outcome to log.
func fail(w http.ResponseWriter, o outcome, code int, field, msg string) outcome {
	writeJSON(w, code, errorBody{Error: msg, Field: field})
	o.status, o.reason = code, msg
	if o.outcome == "" {
		o.outcome = "rejected"
	}
	return o
}

func (s *Service) handle(w http.ResponseWriter, r *http.Request, name string) outcome {
	var o outcome
	src, ok := s.sources[name]
	if !ok {
		return fail(w, o, http.StatusNotFound, "source", fmt.Sprintf("unknown webhook source %q", clip(name)))
	}
	if r.Method != http.MethodPost {
		w.Header().Set("Allow", http.MethodPost)
		return fail(w, o, http.StatusMethodNotAllowed, "method", fmt.Sprintf("method %s not allowed; use POST", r.Method))
	}
	_, form := src.adapter.(FormAdapter)
	mediaType, msg := checkContentType(r.Header.Get("Content-Type"), form)
	if msg != "" {
		return fail(w, o, http.StatusUnsupportedMediaType, "Content-Type", msg)
	}
	limit := s.cfg.MaxBodyBytes
	tooLarge := fmt.Sprintf("the body is larger than %d bytes", limit)
	if r.ContentLength > limit {
		return fail(w, o, http.StatusRequestEntityTooLarge, "body", tooLarge)
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, limit))
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			return fail(w, o, http.StatusRequestEntityTooLarge, "body", tooLarge)
		}
		return fail(w, o, http.StatusBadRequest, "body", "reading the body failed: "+err.Error())
	}

	// Verify the signature over the raw bytes, before anything looks inside them.
	d, vo, ok := s.verify(w, r, src, body, o)
	if !ok {
		return vo
	}
	o = vo
	d.ContentType = mediaType
	if mediaType == "application/json" {
		if err := checkJSONText(body); err != nil {
			return s.inputFailure(w, o, err)
		}
	}
	if _, thin := src.adapter.(RecordFetcher); thin {
		// A thin format fetches the record from the HRIS API: a re-delivery of a webhook-id
		// accepted before is answered first, without calling the API (which may be slow or
		// down), as the duplicate it is.
		if prev, ok := s.receivedBefore(r.Context(), d); ok {
			return s.answerRedelivery(w, o, d, prev)
		}
	}

	evs, err := decodeAll(r.Context(), src.adapter, d)
	if errors.Is(err, ErrIgnored) {
		writeJSON(w, http.StatusOK, acceptedBody{Status: "ignored"})
		o.status, o.outcome = http.StatusOK, "ignored"
		return o
	}
	var ae *apiError
	if errors.As(err, &ae) {
		return s.apiFailure(w, r.Context(), o, src, ae)
	}
	if err != nil {
		return s.inputFailure(w, o, err)
	}
	// Validate every event before storing any, so a bad delivery stores nothing.
	changes := make([]change, len(evs))
	for i, ev := range evs {
		o.workerID = clip(ev.Worker.WorkerID)
		if changes[i], err = validate(ev); err == nil {
			err = s.checkEffectiveWindow(changes[i])
		}
		if err != nil {
			err = vendorFieldError(src.adapter, err)
			if len(evs) > 1 {
				err = prefixField(err, fmt.Sprintf("events[%d]", i))
			}
			return s.inputFailure(w, o, err)
		}
	}

	// A client that hangs up must not abort the transaction between PubAck and commit, so
	// ingest runs on a context that keeps the trace but not the request's cancellation.
	ictx, cancel := context.WithTimeout(context.WithoutCancel(r.Context()), s.cfg.PublishTimeout+30*time.Second)
	defer cancel()
	results := make([]acceptedBody, 0, len(changes))
	allDup, anyStale := true, false
	for _, c := range changes {
		dd := d
		if len(changes) > 1 {
			dd.WebhookID = d.WebhookID + "/" + c.worker.WorkerId
		}
		res, err := s.ingest(ictx, dd, c)
		o.eventID = eventID(name, dd.WebhookID)
		var ie *InputError
		switch {
		case errors.Is(err, errConflict):
			return conflict(w, o, dd.WebhookID, name)
		case errors.As(err, &ie):
			return s.inputFailure(w, o, err)
		case err != nil:
			o.outcome, o.err = "unavailable", err
			w.Header().Set("Retry-After", "30")
			msg := "the event could not be stored; nothing was recorded, retry later"
			if errors.Is(err, errPublish) {
				msg = "the event stream is unavailable; nothing was recorded, retry later"
			}
			return fail(w, o, http.StatusServiceUnavailable, "", msg)
		}
		b := acceptedBody{Status: "accepted", EventID: res.eventID, Subject: res.subject, StreamSeq: res.seq, Stale: res.stale,
			Effect: res.effect, Reason: res.reason}
		switch {
		case res.duplicate:
			b.Status, b.DuplicateOf, b.Effect, b.Reason = "duplicate", res.duplicateOf, "none", ""
			if res.duplicateOf != "" {
				b.Reason = "the same content was received before under another webhook-id"
			}
		case res.scheduled:
			b.Status, b.EffectiveTime, b.Effect = "scheduled", res.effective.UTC().Format(time.RFC3339Nano), "held"
		case res.waiting:
			b.Status, b.Effect = "held", "held"
		}
		allDup = allDup && res.duplicate
		anyStale = anyStale || res.stale
		results = append(results, b)
	}
	code := http.StatusAccepted
	if allDup {
		code = http.StatusOK
	}
	if len(results) == 1 {
		writeJSON(w, code, results[0])
		o.outcome = results[0].Status
	} else {
		status := "accepted"
		if allDup {
			status = "duplicate"
		}
		writeJSON(w, code, acceptedBody{Status: status, Events: results})
		o.outcome = status
	}
	o.status = code
	if anyStale {
		o.outcome = "accepted_stale"
	}
	return o
}

// decodeAll runs the adapter: every event of a batch format, or the one event.
func decodeAll(ctx context.Context, a Adapter, d Delivery) ([]HREvent, error) {
	if b, ok := a.(BatchAdapter); ok {
		evs, err := b.DecodeBatch(ctx, d)
		if err == nil && len(evs) == 0 {
			return nil, Unprocessable("", "the delivery holds no event")
		}
		return evs, err
	}
	ev, err := a.Decode(ctx, d)
	if err != nil {
		return nil, err
	}
	return []HREvent{ev}, nil
}

func prefixField(err error, prefix string) error {
	var ie *InputError
	if !errors.As(err, &ie) {
		return err
	}
	out := *ie
	if out.Field != "" {
		out.Field = prefix + "." + out.Field
	} else {
		out.Field = prefix
	}
	out.Message = prefix + ": " + out.Message
	return &out
}

// verify authenticates a delivery with the source's scheme (Standard Webhooks, or the
// vendor's own) and returns it; ok is false when the answer has been written.
func (s *Service) verify(w http.ResponseWriter, r *http.Request, src *source, body []byte, o outcome) (Delivery, outcome, bool) {
	var ts time.Time
	if src.ownVerifier != nil {
		id, t, err := src.ownVerifier.VerifyRequest(r.Header, body)
		if err != nil {
			var ie *InputError
			if errors.As(err, &ie) {
				return Delivery{}, fail(w, o, ie.Status, ie.Field, ie.Error()), false
			}
			return Delivery{}, fail(w, o, http.StatusUnauthorized, "", err.Error()), false
		}
		o.webhookID, ts = id, t
	} else {
		o.webhookID = r.Header.Get(webhook.HeaderID)
		t, err := src.verifier.Verify(o.webhookID, r.Header.Get(webhook.HeaderTimestamp), r.Header.Get(webhook.HeaderSignature), body)
		if err != nil {
			return Delivery{}, fail(w, o, http.StatusUnauthorized, signatureField(err), err.Error()), false
		}
		ts = t
	}
	if len(o.webhookID) > maxWebhookIDLen {
		return Delivery{}, fail(w, o, http.StatusBadRequest, webhook.HeaderID, fmt.Sprintf("webhook-id is longer than %d bytes", maxWebhookIDLen)), false
	}
	if err := checkText(webhook.HeaderID, o.webhookID, maxWebhookIDLen); err != nil {
		return Delivery{}, fail(w, o, http.StatusBadRequest, webhook.HeaderID, err.Error()), false
	}
	return Delivery{Source: src.name, WebhookID: o.webhookID, Timestamp: ts, Received: s.now(), Body: body}, o, true
}

// checkEffectiveWindow refuses an effective_time far from now (Config.EffectivePast and
// EffectiveFuture): a typo in a year would otherwise hold an event for decades or rewrite
// history from before the worker existed.
func (s *Service) checkEffectiveWindow(c change) error {
	if c.effectiveTime.IsZero() {
		return nil
	}
	now := s.now()
	if lo := now.Add(-s.cfg.EffectivePast); c.effectiveTime.Before(lo) {
		return Unprocessable("effective_time", "effective_time %s is more than %s in the past (before %s); check the year",
			c.effectiveTime.UTC().Format(time.RFC3339), s.cfg.EffectivePast, lo.UTC().Format(time.DateOnly))
	}
	if hi := now.Add(s.cfg.EffectiveFuture); c.effectiveTime.After(hi) {
		return Unprocessable("effective_time", "effective_time %s is more than %s in the future (after %s); check the year",
			c.effectiveTime.UTC().Format(time.RFC3339), s.cfg.EffectiveFuture, hi.UTC().Format(time.DateOnly))
	}
	return nil
}

// apiFailure answers a delivery whose record the HRIS API would not give:
//
//   - 404 for the employee: 200 "ignored" so the HRIS stops retrying (it would for days, and
//     a retry cannot make the employee exist), and a finding for the operator;
//   - 401/403: 503 (the HRIS retries once an operator has fixed the credential), a finding
//     naming the source's credential, logged at error;
//   - unreachable, timed out, another status: 503 naming the cause category.
//
// No answer carries the API's URL or credentials.
func (s *Service) apiFailure(w http.ResponseWriter, ctx context.Context, o outcome, src *source, ae *apiError) outcome {
	cause := ae.cause()
	if ae.status == http.StatusNotFound {
		s.raiseFinding(ctx, finding{kind: findingHRISNotFound, source: src.name, workerID: ae.workerID, eventID: eventID(src.name, o.webhookID),
			detail: fmt.Sprintf("%s for webhook-id %s; nothing was recorded: check whether the employee was deleted or the webhook names a wrong id", cause, clip(o.webhookID))})
		writeJSON(w, http.StatusOK, acceptedBody{Status: "ignored", Effect: "none", Reason: cause})
		o.status, o.outcome, o.reason = http.StatusOK, "ignored", cause
		return o
	}
	if ae.credentialRefused() {
		detail := fmt.Sprintf("%s: source %s cannot fetch records; fix its api credential (%s) — deliveries answer 503 until then", cause, src.name, src.credentialName)
		s.raiseFinding(ctx, finding{kind: findingHRISCredential, source: src.name, detail: detail})
		s.log.ErrorContext(ctx, "HRIS API credential refused", "source", src.name, "credential", src.credentialName, "status", ae.status)
	}
	o.outcome, o.err = "unavailable", ae
	w.Header().Set("Retry-After", "30")
	return fail(w, o, http.StatusServiceUnavailable, "", cause+"; nothing was recorded, retry later")
}

func (s *Service) inputFailure(w http.ResponseWriter, o outcome, err error) outcome {
	var ie *InputError
	if errors.As(err, &ie) {
		return fail(w, o, ie.Status, ie.Field, ie.Error())
	}
	// Not the sender's fault (e.g. an adapter could not reach the HRIS API): retry later.
	o.outcome, o.err = "unavailable", err
	w.Header().Set("Retry-After", "30")
	return fail(w, o, http.StatusServiceUnavailable, "", "the event could not be decoded right now; retry later")
}

// checkContentType returns the body's media type, or a message saying why it is refused:
// JSON, or form encoding for the sources whose adapter reads it, in UTF-8.
func checkContentType(ct string, form bool) (string, string) {
	want := "application/json"
	if form {
		want += " or " + contentTypeForm
	}
	if ct == "" {
		return "", "Content-Type is missing; send " + want
	}
	mt, params, err := mime.ParseMediaType(ct)
	if err != nil || (mt != "application/json" && (!form || mt != contentTypeForm)) {
		return "", fmt.Sprintf("Content-Type %q is not supported; send %s", clip(ct), want)
	}
	if cs, ok := params["charset"]; ok && !strings.EqualFold(cs, "utf-8") {
		return "", fmt.Sprintf("charset %q is not supported; send UTF-8", clip(cs))
	}
	return mt, ""
}

func signatureField(err error) string {
	msg := err.Error()
	switch {
	case errors.Is(err, webhook.ErrMissingHeader):
		for _, h := range []string{webhook.HeaderID, webhook.HeaderTimestamp, webhook.HeaderSignature} {
			if strings.HasSuffix(msg, h) {
				return h
			}
		}
	case errors.Is(err, webhook.ErrBadTimestamp), errors.Is(err, webhook.ErrStale):
		return webhook.HeaderTimestamp
	}
	return webhook.HeaderSignature
}

func eventID(source, webhookID string) string { return "intake:" + source + ":" + webhookID }

var (
	errConflict = errors.New("intake: webhook-id reused with a different body")
	errPublish  = errors.New("intake: publish to JetStream failed")
)

type ingestResult struct {
	duplicate bool
	// duplicateOf: the event whose content this delivery repeated under a new webhook-id.
	duplicateOf string
	// effect of the event ("applied" or "none") and, for none, why.
	effect, reason string
	// waiting: held until the worker's hire arrives.
	waiting   bool
	stale     bool
	scheduled bool
	effective time.Time
	eventID   string
	subject   string
	seq       uint64
}

// priorReceipt is the stored receipt of a webhook-id.
type priorReceipt struct {
	sum     []byte
	eventID string
	subject string
	seq     *int64
	// dupOf: this webhook-id repeated the content of another event (that event's id).
	dupOf *string
	// sameID: the receipt is this webhook-id's own, not another with the same content.
	sameID bool
}

// result answers a delivery whose body hashes to sum, as ingest does for a webhook-id it
// has stored: a duplicate of the original event, or errConflict when the body differs.
func (p priorReceipt) result(sum []byte) (ingestResult, error) {
	r := ingestResult{eventID: p.eventID, subject: p.subject}
	if p.sameID && !bytes.Equal(sum, p.sum) {
		return r, errConflict
	}
	r.duplicate = true
	if !p.sameID {
		// Same content, another delivery id: the original event answers.
		r.duplicateOf = p.eventID
	}
	if p.dupOf != nil {
		r.eventID, r.duplicateOf, r.subject = *p.dupOf, *p.dupOf, ""
	}
	if p.seq != nil {
		r.seq = uint64(*p.seq)
	}
	return r, nil
}

// receivedBefore looks up the receipt of the delivery's webhook-id (a delivery of one event;
// one of several events is stored under webhook-id/worker-id).
func (s *Service) receivedBefore(ctx context.Context, d Delivery) (priorReceipt, bool) {
	var p priorReceipt
	err := s.pool.QueryRow(ctx, receiptOf, d.Source, d.WebhookID, nil).Scan(&p.sum, &p.eventID, &p.subject, &p.seq, &p.dupOf, &p.sameID)
	return p, err == nil
}

// conflict answers a webhook-id received before with another body.
func conflict(w http.ResponseWriter, o outcome, webhookID, source string) outcome {
	o.outcome = "conflict"
	return fail(w, o, http.StatusConflict, webhook.HeaderID,
		fmt.Sprintf("webhook-id %q was already received from source %s with a different body", clip(webhookID), source))
}

// answerRedelivery answers a webhook-id received before, as ingest would: 200 duplicate, or
// 409 when the body differs.
func (s *Service) answerRedelivery(w http.ResponseWriter, o outcome, d Delivery, p priorReceipt) outcome {
	o.eventID = p.eventID
	sum := sha256.Sum256(d.Body)
	r, err := p.result(sum[:])
	if err != nil {
		return conflict(w, o, d.WebhookID, d.Source)
	}
	writeJSON(w, http.StatusOK, acceptedBody{Status: "duplicate", EventID: r.eventID, Subject: r.subject, StreamSeq: r.seq, DuplicateOf: r.duplicateOf, Effect: "none"})
	o.status, o.outcome = http.StatusOK, "duplicate"
	return o
}
