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

	"github.com/nats-io/nats.go/jetstream"
	"go.opentelemetry.io/contrib/instrumentation/net/http/otelhttp"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/tenure-dev/tenure/pkg/events"
	"github.com/tenure-dev/tenure/pkg/natsx"
	"github.com/tenure-dev/tenure/pkg/webhook"
	eventsv1 "github.com/tenure-dev/tenure/proto/tenure/events/v1"
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
//	    or no signature matching a secret of the source (verified over the raw body)
//	400 body is not one JSON value of the source's format (unknown field, bad syntax, ...)
//	422 the event is not valid (missing worker_id, unknown type, bad date, ...)
//	409 the webhook-id was received before with a different body
//	200 {"status":"duplicate","event_id":...} the webhook-id was received before
//	202 {"status":"accepted","event_id":...,"subject":...,"stream_seq":...}
//	503 JetStream or Postgres unavailable: nothing was stored, the sender should retry
//
// The handler is wrapped in otelhttp, so a trace starts at the webhook (or continues the
// sender's traceparent) and the published event carries it.
func (s *Service) Handler() http.Handler {
	mux := http.NewServeMux()
	// No method in the pattern: an unknown source must answer 404 before the method is checked.
	mux.HandleFunc("/webhooks/{source}", s.serveWebhook)
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusNotFound, errorBody{Error: "no such endpoint; webhooks are POST /webhooks/{source}"})
	})
	return otelhttp.NewHandler(mux, "intake.webhook",
		otelhttp.WithSpanNameFormatter(func(_ string, r *http.Request) string {
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
	// Stale is true when the event was older than the registry's record: it was recorded in
	// the history and published, but the current record did not change.
	Stale bool `json:"stale,omitempty"`
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
	level := slog.LevelInfo
	switch {
	case o.status >= 500:
		level = slog.LevelError
		attrs = append(attrs, "err", o.err)
	case o.status >= 400:
		level = slog.LevelWarn
	}
	s.log.Log(ctx, level, "webhook", attrs...)
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
	if msg := checkContentType(r.Header.Get("Content-Type")); msg != "" {
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
	o.webhookID = r.Header.Get(webhook.HeaderID)
	ts, err := src.verifier.Verify(o.webhookID, r.Header.Get(webhook.HeaderTimestamp), r.Header.Get(webhook.HeaderSignature), body)
	if err != nil {
		return fail(w, o, http.StatusUnauthorized, signatureField(err), err.Error())
	}
	if len(o.webhookID) > maxWebhookIDLen {
		return fail(w, o, http.StatusBadRequest, webhook.HeaderID, fmt.Sprintf("webhook-id is longer than %d bytes", maxWebhookIDLen))
	}
	if err := checkText(webhook.HeaderID, o.webhookID, maxWebhookIDLen); err != nil {
		return fail(w, o, http.StatusBadRequest, webhook.HeaderID, err.Error())
	}

	d := Delivery{Source: name, WebhookID: o.webhookID, Timestamp: ts, Received: s.now(), Body: body}
	ev, err := src.adapter.Decode(r.Context(), d)
	if err != nil {
		return s.inputFailure(w, o, err)
	}
	o.workerID = clip(ev.Worker.WorkerID)
	c, err := validate(ev)
	if err != nil {
		return s.inputFailure(w, o, err)
	}

	// A client that hangs up must not abort the transaction between PubAck and commit, so
	// ingest runs on a context that keeps the trace but not the request's cancellation.
	ictx, cancel := context.WithTimeout(context.WithoutCancel(r.Context()), s.cfg.PublishTimeout+30*time.Second)
	defer cancel()
	res, err := s.ingest(ictx, d, c)
	o.eventID = eventID(name, o.webhookID)
	switch {
	case errors.Is(err, errConflict):
		o.outcome = "conflict"
		return fail(w, o, http.StatusConflict, webhook.HeaderID,
			fmt.Sprintf("webhook-id %q was already received from source %s with a different body", clip(o.webhookID), name))
	case err != nil:
		o.outcome, o.err = "unavailable", err
		w.Header().Set("Retry-After", "30")
		msg := "the event could not be stored; nothing was recorded, retry later"
		if errors.Is(err, errPublish) {
			msg = "the event stream is unavailable; nothing was recorded, retry later"
		}
		return fail(w, o, http.StatusServiceUnavailable, "", msg)
	case res.duplicate:
		writeJSON(w, http.StatusOK, acceptedBody{Status: "duplicate", EventID: res.eventID, Subject: res.subject, StreamSeq: res.seq})
		o.status, o.outcome = http.StatusOK, "duplicate"
		return o
	}
	writeJSON(w, http.StatusAccepted, acceptedBody{Status: "accepted", EventID: res.eventID, Subject: res.subject, StreamSeq: res.seq, Stale: res.stale})
	o.status, o.outcome = http.StatusAccepted, "accepted"
	if res.stale {
		o.outcome = "accepted_stale"
	}
	return o
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

func checkContentType(ct string) string {
	if ct == "" {
		return "Content-Type is missing; send application/json"
	}
	mt, params, err := mime.ParseMediaType(ct)
	if err != nil || mt != "application/json" {
		return fmt.Sprintf("Content-Type %q is not supported; send application/json", clip(ct))
	}
	if cs, ok := params["charset"]; ok && !strings.EqualFold(cs, "utf-8") {
		return fmt.Sprintf("charset %q is not supported; send UTF-8", clip(cs))
	}
	return ""
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
	stale     bool
	eventID   string
	subject   string
	seq       uint64
}

// ingest records and publishes one validated event, all or nothing.
//
// Everything happens in one Postgres transaction: the receipt row (whose primary key is the
// replay guard), the registry update and the history row; then the event is published to
// JetStream and the transaction commits only after the PubAck. So:
//   - publish fails → rollback, 503: nothing is stored and the HRIS retries later.
//   - commit fails after the PubAck → 503 too, and the event is in the stream but not in
//     Postgres. The HRIS retries with the same webhook-id, so the retry is processed again and
//     republished with the same event id (ce-id and Nats-Msg-Id "intake:<source>:<webhook-id>"):
//     within the stream's duplicate window JetStream drops it (the PubAck says Duplicate and
//     carries the original sequence); after it, consumers drop it in their Postgres inbox,
//     which is keyed on ce-id. Either way each consumer acts once.
//   - concurrent deliveries of one webhook-id: the second INSERT of the receipt waits on the
//     first one's uncommitted row and then sees the conflict (→ 200 duplicate), or inserts if
//     the first rolled back. Only one of them publishes.
//
// The transaction stays open while publishing; that holds one connection and the worker's row
// lock for at most PublishTimeout.
func (s *Service) ingest(ctx context.Context, d Delivery, c change) (res ingestResult, err error) {
	et := c.typ
	res.eventID = eventID(d.Source, d.WebhookID)
	res.subject = events.Subject(SubjectPrefix, et.token, c.worker.WorkerId)
	sum := sha256.Sum256(d.Body)

	tx, err := s.pool.Begin(ctx)
	if err != nil {
		return res, fmt.Errorf("intake: begin: %w", err)
	}
	defer tx.Rollback(context.WithoutCancel(ctx))

	tag, err := tx.Exec(ctx, `INSERT INTO receipts (source, webhook_id, body_sha256, event_id, worker_id, subject, received_at)
		VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (source, webhook_id) DO NOTHING`,
		d.Source, d.WebhookID, sum[:], res.eventID, c.worker.WorkerId, res.subject, d.Received)
	if err != nil {
		return res, fmt.Errorf("intake: insert receipt: %w", err)
	}
	if tag.RowsAffected() == 0 {
		var prev []byte
		var seq *int64
		err := tx.QueryRow(ctx, `SELECT body_sha256, event_id, subject, stream_seq FROM receipts WHERE source = $1 AND webhook_id = $2`,
			d.Source, d.WebhookID).Scan(&prev, &res.eventID, &res.subject, &seq)
		if err != nil {
			return res, fmt.Errorf("intake: read receipt: %w", err)
		}
		if !bytes.Equal(prev, sum[:]) {
			return res, errConflict
		}
		if seq != nil {
			res.seq = uint64(*seq)
		}
		res.duplicate = true
		return res, nil
	}

	cur, err := loadWorker(ctx, tx, c.worker.WorkerId, true)
	if err != nil {
		return res, err
	}
	w := c.worker
	var curStatus eventsv1.WorkerStatus
	if cur != nil {
		curStatus = cur.worker.Status
		if !et.full {
			fill(w, cur.worker)
		}
	}
	w.Status = statusAfter(et, curStatus)
	eff := c.effectiveTime
	if eff.IsZero() {
		eff = d.Received
	}
	res.stale = cur != nil && eff.Before(cur.effectiveTime)
	applied := false
	if !res.stale {
		if applied, err = upsertWorker(ctx, tx, w, eff, res.eventID, d.Source, d.Received); err != nil {
			return res, err
		}
		res.stale = !applied
	}
	if err := appendHistory(ctx, tx, c, w, res.eventID, d.Source, eff, d.Received, applied); err != nil {
		return res, err
	}

	msg, err := events.Msg(ctx, events.Event{
		ID:       res.eventID,
		Subject:  res.subject,
		Source:   "tenure/intake/" + d.Source,
		WorkerID: w.WorkerId,
		Actor:    "hris:" + d.Source,
		Time:     d.Received,
		Payload: &eventsv1.WorkerEvent{
			EventId:       d.WebhookID,
			Source:        d.Source,
			Kind:          et.kind,
			HrEventType:   c.hrType,
			Worker:        w,
			EffectiveTime: timestamppb.New(eff),
			ReceivedTime:  timestamppb.New(d.Received),
		},
	})
	if err != nil {
		return res, err
	}
	pctx, cancel := context.WithTimeout(ctx, s.cfg.PublishTimeout)
	ack, err := s.js.PublishMsg(pctx, msg, jetstream.WithExpectStream(natsx.EventsStream))
	cancel()
	if err != nil {
		return res, fmt.Errorf("%w: %s: %w", errPublish, res.subject, err)
	}
	res.seq = ack.Sequence
	if _, err := tx.Exec(ctx, `UPDATE receipts SET stream_seq = $3 WHERE source = $1 AND webhook_id = $2`,
		d.Source, d.WebhookID, int64(ack.Sequence)); err != nil {
		return res, fmt.Errorf("intake: record stream sequence (event %s is published; the retry is deduplicated): %w", res.eventID, err)
	}
	if err := tx.Commit(ctx); err != nil {
		return res, fmt.Errorf("intake: commit (event %s is published; the retry is deduplicated): %w", res.eventID, err)
	}
	return res, nil
}
