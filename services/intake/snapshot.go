package intake

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/csv"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"regexp"
	"slices"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	"github.com/tenure-dev/tenure/pkg/events"
	"github.com/tenure-dev/tenure/pkg/pgstore"
	eventsv1 "github.com/tenure-dev/tenure/proto/tenure/events/v1"
	intakev1 "github.com/tenure-dev/tenure/proto/tenure/intake/v1"
)

// A roster is an HR snapshot: every worker the HRIS knows, with a status. It is compared with
// the registry (see Reconcile).
//
// JSON: {"as_of": "2026-11-23T06:00:00Z", "workers": [{"worker_id": "E1", "status": "active",
// ...HRWorker fields...}]}; as_of is optional. CSV: a header row naming columns from
// rosterColumns (worker_id required, any order), one worker per row.
type roster struct {
	AsOf    string      `json:"as_of,omitempty"`
	Workers []rosterRow `json:"workers"`
}

type rosterRow struct {
	WorkerID   string `json:"worker_id"`
	WorkerType string `json:"worker_type,omitempty"`
	Status     string `json:"status,omitempty"`
	GivenName  string `json:"given_name,omitempty"`
	FamilyName string `json:"family_name,omitempty"`
	Email      string `json:"email,omitempty"`
	JobCode    string `json:"job_code,omitempty"`
	Department string `json:"department,omitempty"`
	ManagerID  string `json:"manager_id,omitempty"`
	Location   string `json:"location,omitempty"`
	StartDate  string `json:"start_date,omitempty"`
	EndDate    string `json:"end_date,omitempty"`
	SponsorID  string `json:"sponsor_id,omitempty"`
	VendorOrg  string `json:"vendor_org,omitempty"`
}

func (r rosterRow) worker() HRWorker {
	return HRWorker{WorkerID: r.WorkerID, WorkerType: r.WorkerType, GivenName: r.GivenName, FamilyName: r.FamilyName,
		Email: r.Email, JobCode: r.JobCode, Department: r.Department, ManagerID: r.ManagerID, Location: r.Location,
		StartDate: r.StartDate, EndDate: r.EndDate, SponsorID: r.SponsorID, VendorOrg: r.VendorOrg}
}

var rosterColumns = []string{"worker_id", "worker_type", "status", "given_name", "family_name", "email", "job_code",
	"department", "manager_id", "location", "start_date", "end_date", "sponsor_id", "vendor_org"}

// maxRosterRows bounds a roster.
const maxRosterRows = 200000

func parseRoster(body []byte, format intakev1.RosterFormat) (roster, error) {
	switch format {
	case intakev1.RosterFormat_ROSTER_FORMAT_JSON:
		return parseRosterJSON(body)
	case intakev1.RosterFormat_ROSTER_FORMAT_CSV:
		return parseRosterCSV(body)
	}
	return roster{}, BadRequest("format", "roster format must be csv or json")
}

// parseRosterJSON decodes the envelope (or bare array) first and each row on its own, so an
// error in a row names it: workers[i].<field>, in the roster's own field names.
func parseRosterJSON(body []byte) (roster, error) {
	var env struct {
		AsOf    string            `json:"as_of,omitempty"`
		Workers []json.RawMessage `json:"workers"`
	}
	trim := bytes.TrimSpace(body)
	if len(trim) > 0 && trim[0] == '[' {
		if err := DecodeStrictJSON(body, &env.Workers); err != nil {
			return roster{}, err
		}
	} else if err := DecodeStrictJSON(body, &env); err != nil {
		return roster{}, err
	}
	if len(env.Workers) > maxRosterRows {
		return roster{}, Unprocessable("workers", "the roster has more than %d rows", maxRosterRows)
	}
	r := roster{AsOf: env.AsOf, Workers: make([]rosterRow, len(env.Workers))}
	for i, raw := range env.Workers {
		where := rowWhere(intakev1.RosterFormat_ROSTER_FORMAT_JSON, i)
		if t := bytes.TrimSpace(raw); len(t) == 0 || t[0] != '{' {
			return roster{}, BadRequest(where, "%s must be an object, not %s", where, jsonValueKind(t))
		}
		if err := DecodeStrictJSON(raw, &r.Workers[i]); err != nil {
			return roster{}, rowError(err, where)
		}
	}
	return r, nil
}

// jsonValueKind names the kind of a JSON value in an error.
func jsonValueKind(v []byte) string {
	if len(v) == 0 {
		return "nothing"
	}
	switch v[0] {
	case '[':
		return "an array"
	case '"':
		return "a string"
	case 't', 'f':
		return "a boolean"
	case 'n':
		return "null"
	}
	return "a number"
}

func parseRosterCSV(body []byte) (roster, error) {
	rd := csv.NewReader(bytes.NewReader(bytes.TrimPrefix(body, []byte("\xef\xbb\xbf"))))
	rd.TrimLeadingSpace = true
	head, err := rd.Read()
	if errors.Is(err, io.EOF) {
		return roster{}, BadRequest("", "the roster is empty; expected a header row")
	}
	if err != nil {
		return roster{}, BadRequest("", "malformed CSV: %v", err)
	}
	idx := map[string]int{}
	for i, h := range head {
		h = strings.ToLower(strings.TrimSpace(h))
		if !slices.Contains(rosterColumns, h) {
			return roster{}, BadRequest("column "+clip(h), "unknown column %q (known: %s)", clip(h), strings.Join(rosterColumns, ", "))
		}
		if _, dup := idx[h]; dup {
			return roster{}, BadRequest("column "+h, "column %q appears twice", h)
		}
		idx[h] = i
	}
	if _, ok := idx["worker_id"]; !ok {
		return roster{}, BadRequest("column worker_id", "the header has no worker_id column")
	}
	var r roster
	for line := 2; ; line++ {
		rec, err := rd.Read()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return roster{}, BadRequest(fmt.Sprintf("row %d", line), "malformed CSV: %v", err)
		}
		if len(r.Workers) >= maxRosterRows {
			return roster{}, Unprocessable("", "the roster has more than %d rows", maxRosterRows)
		}
		get := func(col string) string {
			if i, ok := idx[col]; ok && i < len(rec) {
				return strings.TrimSpace(rec[i])
			}
			return ""
		}
		r.Workers = append(r.Workers, rosterRow{Status: get("status"),
			WorkerID: get("worker_id"), WorkerType: get("worker_type"), GivenName: get("given_name"), FamilyName: get("family_name"),
			Email: get("email"), JobCode: get("job_code"), Department: get("department"), ManagerID: get("manager_id"),
			Location: get("location"), StartDate: get("start_date"), EndDate: get("end_date"), SponsorID: get("sponsor_id"), VendorOrg: get("vendor_org"),
		})
	}
	return r, nil
}

// snapshotRequest is a roster to reconcile.
type snapshotRequest struct {
	source     string
	snapshotID string // "": derived from the roster and its as_of (snapshotIDOf)
	body       []byte
	format     intakev1.RosterFormat
	asOf       time.Time // zero: the roster's as_of, else now
	dryRun     bool
	actor      string
	// allSources compares the roster with the whole registry (a Reconcile without a source);
	// otherwise only the workers source owns can become leavers (see loadRegistry).
	allSources bool
}

var errSnapshotDuplicate = errors.New("intake: snapshot received before")

// rowWhere names a roster row in errors: workers[i] for JSON (also a bare array), row n for
// CSV (the header is row 1).
func rowWhere(format intakev1.RosterFormat, i int) string {
	if format == intakev1.RosterFormat_ROSTER_FORMAT_CSV {
		return fmt.Sprintf("row %d", i+2)
	}
	return fmt.Sprintf("workers[%d]", i)
}

// rowError names the roster row and the roster's own field (a CSV column or JSON key) in an
// error from validate or the JSON decoder: field "row 3.email" or "workers[1].email" and a
// message like "row 3.email ... is not a bare email address", where validate says
// "worker.email". Other errors pass through.
func rowError(err error, where string) error {
	var ie *InputError
	if !errors.As(err, &ie) {
		return err
	}
	out := *ie
	field := strings.TrimPrefix(out.Field, "worker.")
	msg := offsetSuffix.ReplaceAllString(rosterFieldNames(out.Message), "")
	switch {
	case field == "":
		out.Field, out.Message = where, where+": "+msg
	case ie.Message == fmt.Sprintf("unknown field %q", ie.Field):
		out.Field = where + "." + field
		out.Message = fmt.Sprintf("unknown field %q", out.Field)
	case strings.HasPrefix(msg, field+" "):
		out.Field = where + "." + field
		out.Message = where + "." + msg
	default:
		out.Field, out.Message = where+"."+field, where+": "+msg
	}
	return &out
}

// offsetSuffix is the byte offset the JSON decoder adds, meaningless within one row.
var offsetSuffix = regexp.MustCompile(` \(offset \d+\)$`)

// rosterFieldNames drops the "worker." of field names in a message, outside the quoted values
// it repeats: a roster row is flat.
func rosterFieldNames(msg string) string {
	var b strings.Builder
	quoted := false
	for i := 0; i < len(msg); i++ {
		c := msg[i]
		switch {
		case quoted && c == '\\' && i+1 < len(msg):
			b.WriteByte(c)
			i++
			c = msg[i]
		case c == '"':
			quoted = !quoted
		case !quoted && strings.HasPrefix(msg[i:], "worker.") && (i == 0 || msg[i-1] == ' ' || msg[i-1] == '('):
			i += len("worker.") - 1
			continue
		}
		b.WriteByte(c)
	}
	return b.String()
}

// Reconcile compares a roster with the registry: a worker active (or on leave) in the
// registry but absent or terminated in the roster becomes a leaver (hr_event_type
// termination, reason snapshot); a worker new to the registry (or terminated there and active
// or on leave in the roster) a joiner (hire or rehire, followed by a leave_start when the
// roster has them on leave); changed attributes a mover; a status between active and on
// leave a leave_start or leave_end. Workers whose registry record is newer than the roster's
// as_of — changed in tenure, or effective, after it — are left alone.
//
// Unless allSources, the roster speaks for its own source only: workers another source owns
// are never terminated by it (absent or marked terminated), though their attributes, leave
// and a rehire apply like for any roster worker.
//
// Unless dry-run, the changes are applied and published through the outbox in one
// transaction, with event ids "intake:snapshot:<source>:<snapshot id>:<worker>" (a
// joiner's leave_start: the same with ":leave_start").
func (s *Service) reconcile(ctx context.Context, req snapshotRequest) (*intakev1.ReconcileResponse, error) {
	r, err := parseRoster(req.body, req.format)
	if err != nil {
		return nil, err
	}
	if len(r.Workers) == 0 {
		return nil, Unprocessable("workers", "the roster lists no workers; refusing to terminate everyone")
	}
	asOf := req.asOf
	if asOf.IsZero() && r.AsOf != "" {
		if asOf, err = time.Parse(time.RFC3339Nano, r.AsOf); err != nil {
			return nil, Unprocessable("as_of", "as_of %q is not an RFC 3339 time", clip(r.AsOf))
		}
	}
	now := s.now()
	if asOf.IsZero() {
		asOf = now
	}
	if asOf.After(now.Add(time.Minute)) {
		return nil, Unprocessable("as_of", "as_of %s is in the future", asOf.UTC().Format(time.RFC3339))
	}
	if req.snapshotID == "" {
		req.snapshotID = snapshotIDOf(req.body, asOf)
	}
	type row struct {
		c      change
		status eventsv1.WorkerStatus
		where  string
		hasTyp bool
	}
	rows := make([]row, 0, len(r.Workers))
	seen := map[string]int{}
	for i, rw := range r.Workers {
		where := rowWhere(req.format, i)
		c, err := validate(HREvent{Type: "job_change", Worker: rw.worker()})
		if err != nil {
			return nil, rowError(err, where)
		}
		if j, dup := seen[rw.WorkerID]; dup {
			return nil, Unprocessable(where+".worker_id", "%s: worker %q is also in %s", where, clip(rw.WorkerID), rowWhere(req.format, j))
		}
		seen[rw.WorkerID] = i
		var st eventsv1.WorkerStatus
		switch strings.ToLower(rw.Status) {
		case "", "active":
			st = eventsv1.WorkerStatus_WORKER_STATUS_ACTIVE
		case "on_leave":
			st = eventsv1.WorkerStatus_WORKER_STATUS_ON_LEAVE
		case "terminated":
			st = eventsv1.WorkerStatus_WORKER_STATUS_TERMINATED
		default:
			return nil, Unprocessable(where+".status", "%s: unknown status %q (active, on_leave, terminated)", where, clip(rw.Status))
		}
		rows = append(rows, row{c: c, status: st, where: where, hasTyp: rw.WorkerType != ""})
	}

	tx, err := s.pool.Begin(ctx)
	if err != nil {
		return nil, fmt.Errorf("intake: begin: %w", err)
	}
	defer tx.Rollback(context.WithoutCancel(ctx))
	if !req.dryRun {
		sum := sha256.Sum256(req.body)
		tag, err := tx.Exec(ctx, `INSERT INTO snapshots (source, snapshot_id, body_sha256, as_of, summary, received_at)
			VALUES ($1, $2, $3, $4, '{}', $5) ON CONFLICT DO NOTHING`, req.source, req.snapshotID, sum[:], asOf, now)
		if err != nil {
			return nil, fmt.Errorf("intake: record snapshot: %w", err)
		}
		if tag.RowsAffected() == 0 {
			return nil, errSnapshotDuplicate
		}
		// One reconciliation at a time: two concurrent ones would both see a worker missing.
		if _, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock(hashtext('intake-reconcile'))`); err != nil {
			return nil, err
		}
	}
	reg, err := loadRegistry(ctx, tx, !req.allSources)
	if err != nil {
		return nil, err
	}
	ours := func(r *registryRecord) bool { return req.allSources || r.owner == req.source }
	// newer: tenure changed the record after the roster was taken (a late webhook, whatever
	// its effective time), or the record takes effect after it (a held event that fired).
	newer := func(r *registryRecord) bool { return r.updatedAt.After(asOf) || r.effectiveTime.After(asOf) }
	resp := &intakev1.ReconcileResponse{RosterWorkers: int32(len(rows)), DryRun: req.dryRun, SnapshotId: req.snapshotID}
	for _, cur := range reg {
		if ours(cur) {
			resp.RegistryWorkers++
		}
	}
	type plan struct {
		hrType  string
		worker  *eventsv1.Worker
		before  *eventsv1.Worker
		changed []string
		// onLeave: a joiner the roster has on leave; a leave_start follows the hire or rehire.
		onLeave bool
	}
	var plans []plan
	for _, rw := range rows {
		id := rw.c.worker.WorkerId
		cur := reg[id]
		delete(reg, id)
		after := proto.Clone(rw.c.worker).(*eventsv1.Worker)
		onLeave := rw.status == eventsv1.WorkerStatus_WORKER_STATUS_ON_LEAVE
		switch {
		case cur == nil:
			if rw.status == eventsv1.WorkerStatus_WORKER_STATUS_TERMINATED {
				continue
			}
			if !rw.hasTyp {
				return nil, Unprocessable(rw.where+".worker_type", "%s: worker %q is new to tenure and needs a worker_type", rw.where, clip(id))
			}
			plans = append(plans, plan{hrType: "hire", worker: after, onLeave: onLeave})
		case newer(cur):
			resp.SkippedNewer++
		case cur.worker.Status == eventsv1.WorkerStatus_WORKER_STATUS_TERMINATED:
			if rw.status != eventsv1.WorkerStatus_WORKER_STATUS_TERMINATED {
				fill(after, cur.worker)
				plans = append(plans, plan{hrType: "rehire", worker: after, before: cur.worker, onLeave: onLeave})
			}
		case rw.status == eventsv1.WorkerStatus_WORKER_STATUS_TERMINATED:
			// Only the worker's own source ends their employment.
			if ours(cur) {
				plans = append(plans, plan{hrType: "termination", worker: &eventsv1.Worker{WorkerId: id, EndDate: rw.c.worker.EndDate}, before: cur.worker})
			}
		default:
			changed := diffWorker(cur.worker, rw.c.worker)
			typ := ""
			switch {
			case rw.status == eventsv1.WorkerStatus_WORKER_STATUS_ON_LEAVE && cur.worker.Status == eventsv1.WorkerStatus_WORKER_STATUS_ACTIVE:
				typ = "leave_start"
			case rw.status == eventsv1.WorkerStatus_WORKER_STATUS_ACTIVE && cur.worker.Status == eventsv1.WorkerStatus_WORKER_STATUS_ON_LEAVE:
				typ = "leave_end"
			case len(changed) == 0:
			case slices.Contains(changed, "worker_type"):
				typ = "conversion"
			case slices.Contains(changed, "job_code"):
				typ = "job_change"
			case slices.Contains(changed, "department"):
				typ = "department_change"
			case slices.Contains(changed, "manager_id"):
				typ = "manager_change"
			default:
				typ = "job_change"
			}
			if typ != "" {
				plans = append(plans, plan{hrType: typ, worker: after, before: cur.worker, changed: changed})
			}
		}
	}
	// Active in tenure, absent from the roster: a leaver the webhooks missed — if the roster's
	// source is the worker's.
	missing := make([]string, 0, len(reg))
	for id, cur := range reg {
		if cur.worker.Status != eventsv1.WorkerStatus_WORKER_STATUS_TERMINATED && ours(cur) {
			missing = append(missing, id)
		}
	}
	slices.Sort(missing)
	for _, id := range missing {
		cur := reg[id]
		if newer(cur) {
			resp.SkippedNewer++
			continue
		}
		plans = append(plans, plan{hrType: "termination", worker: &eventsv1.Worker{WorkerId: id}, before: cur.worker})
	}

	var evs []events.Event
	for _, p := range plans {
		et := eventTypes[p.hrType]
		ch := &intakev1.ReconcileChange{WorkerId: p.worker.WorkerId, Kind: et.token, HrEventType: p.hrType, ChangedFields: p.changed, Before: p.before}
		if req.dryRun {
			w := proto.Clone(p.worker).(*eventsv1.Worker)
			if p.before != nil && !et.full {
				fill(w, p.before)
			}
			w.Status = statusAfter(et, statusOf(p.before))
			if p.onLeave {
				w.Status = eventsv1.WorkerStatus_WORKER_STATUS_ON_LEAVE
			}
			ch.After = w
			resp.Changes = append(resp.Changes, ch)
			continue
		}
		steps := []change{{hrType: p.hrType, typ: et, worker: p.worker, reason: "snapshot"}}
		if p.onLeave {
			// Downstream grants a joiner active access: the leave follows at once, in order.
			steps = append(steps, change{hrType: "leave_start", typ: eventTypes["leave_start"], worker: &eventsv1.Worker{WorkerId: p.worker.WorkerId}, reason: "snapshot"})
		}
		for i, c := range steps {
			suffix := ""
			if i > 0 {
				suffix = ":" + c.hrType
			}
			id := "intake:snapshot:" + req.source + ":" + req.snapshotID + ":" + p.worker.WorkerId + suffix
			ar, err := s.apply(ctx, tx, pending{source: req.source, sourceEventID: "snapshot:" + req.snapshotID + ":" + p.worker.WorkerId + suffix,
				eventID: id, c: c, eff: asOf, received: now, actor: req.actor, fromRoster: true})
			if err != nil {
				return nil, fmt.Errorf("intake: reconcile %s: %w", p.worker.WorkerId, err)
			}
			// The change shows the worker as the run leaves them, under the first event's id.
			ch.After = ar.worker
			if ar.publish && ch.EventId == "" {
				ch.EventId = id
			}
			evs = append(evs, ar.published()...)
		}
		resp.Changes = append(resp.Changes, ch)
	}
	if req.dryRun {
		return resp, nil
	}
	if err := pgstore.Enqueue(ctx, tx, evs...); err != nil {
		return nil, fmt.Errorf("intake: enqueue: %w", err)
	}
	summary, _ := protojson.Marshal(&intakev1.ReconcileResponse{RosterWorkers: resp.RosterWorkers, RegistryWorkers: resp.RegistryWorkers,
		SkippedNewer: resp.SkippedNewer, SnapshotId: resp.SnapshotId})
	if _, err := tx.Exec(ctx, `UPDATE snapshots SET summary = $3 WHERE source = $1 AND snapshot_id = $2`, req.source, req.snapshotID, summary); err != nil {
		return nil, err
	}
	if err := tx.Commit(ctx); err != nil {
		return nil, fmt.Errorf("intake: commit snapshot: %w", err)
	}
	s.relay.Poke()
	s.log.InfoContext(ctx, "snapshot reconciled", "source", req.source, "snapshot_id", req.snapshotID, "changes", len(resp.Changes), "actor", req.actor)
	return resp, nil
}

func statusOf(w *eventsv1.Worker) eventsv1.WorkerStatus {
	if w == nil {
		return eventsv1.WorkerStatus_WORKER_STATUS_UNSPECIFIED
	}
	return w.Status
}

// diffWorker names the attributes the roster sets to another value than the registry
// (an empty roster cell means "not in the roster", not "cleared").
func diffWorker(cur, ros *eventsv1.Worker) []string {
	var out []string
	if ros.WorkerType != eventsv1.WorkerType_WORKER_TYPE_UNSPECIFIED && ros.WorkerType != cur.WorkerType {
		out = append(out, "worker_type")
	}
	for _, f := range []struct {
		name     string
		cur, ros string
	}{
		{"given_name", cur.GivenName, ros.GivenName}, {"family_name", cur.FamilyName, ros.FamilyName}, {"email", cur.Email, ros.Email},
		{"job_code", cur.JobCode, ros.JobCode}, {"department", cur.Department, ros.Department}, {"manager_id", cur.ManagerId, ros.ManagerId},
		{"location", cur.Location, ros.Location}, {"start_date", cur.StartDate, ros.StartDate}, {"end_date", cur.EndDate, ros.EndDate},
		{"sponsor_id", cur.SponsorId, ros.SponsorId}, {"vendor_org", cur.VendorOrg, ros.VendorOrg},
	} {
		if f.ros != "" && f.ros != f.cur {
			out = append(out, f.name)
		}
	}
	return out
}

// registryRecord is a registry record with the source that owns the worker.
type registryRecord struct {
	*record
	owner string
}

// loadRegistry reads every registry record with its owner: the source of the worker's latest
// applied hire or rehire (a joiner from another source moves the worker to it), else of their
// first applied event, else the record's source. The record's own source column is the last
// event's, which a contract end ("intake") or another source's mover changes. Without
// withOwner (a comparison across every source) owner is left empty.
func loadRegistry(ctx context.Context, tx pgx.Tx, withOwner bool) (map[string]*registryRecord, error) {
	owner := "''"
	if withOwner {
		owner = `COALESCE((
		SELECT h.source FROM worker_history h WHERE h.worker_id = workers.worker_id AND h.applied
		ORDER BY h.hr_event_type IN ('hire', 'rehire') DESC,
			CASE WHEN h.hr_event_type IN ('hire', 'rehire') THEN h.effective_time END DESC,
			CASE WHEN h.hr_event_type IN ('hire', 'rehire') THEN h.seq END DESC,
			h.seq
		LIMIT 1), workers.source)`
	}
	rows, err := tx.Query(ctx, "SELECT "+workerColumns+", "+owner+" FROM workers")
	if err != nil {
		return nil, fmt.Errorf("intake: read registry: %w", err)
	}
	defer rows.Close()
	out := map[string]*registryRecord{}
	for rows.Next() {
		var owner string
		r, err := scanRecord(scanAlso{rows, []any{&owner}})
		if err != nil {
			return nil, fmt.Errorf("intake: read registry: %w", err)
		}
		out[r.worker.WorkerId] = &registryRecord{record: r, owner: owner}
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("intake: read registry: %w", err)
	}
	return out, nil
}

// scanAlso scans a row's further columns into extra after those its caller asks for.
type scanAlso struct {
	row   pgx.Row
	extra []any
}

func (s scanAlso) Scan(dest ...any) error { return s.row.Scan(append(dest, s.extra...)...) }

// serveSnapshot handles POST /snapshots/{source}: a roster signed like the source's webhooks,
// Content-Type text/csv or application/json, ?dry_run=true to only compute the diff.
// Answers: 202 with the changes (a ReconcileResponse in JSON), 200 for a dry run or a
// snapshot id (webhook-id) seen before, 4xx like webhooks.
func (s *Service) serveSnapshot(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("source")
	o := s.handleSnapshot(w, r, name)
	s.log.Log(r.Context(), levelOf(o.status), "snapshot", "source", clip(name), "outcome", o.outcome, "status", o.status, "reason", o.reason, "err", o.err)
}

func (s *Service) handleSnapshot(w http.ResponseWriter, r *http.Request, name string) outcome {
	var o outcome
	src, ok := s.sources[name]
	if !ok {
		return fail(w, o, http.StatusNotFound, "source", fmt.Sprintf("unknown webhook source %q", clip(name)))
	}
	if r.Method != http.MethodPost {
		w.Header().Set("Allow", http.MethodPost)
		return fail(w, o, http.StatusMethodNotAllowed, "method", fmt.Sprintf("method %s not allowed; use POST", r.Method))
	}
	format, msg := rosterContentType(r.Header.Get("Content-Type"))
	if msg != "" {
		return fail(w, o, http.StatusUnsupportedMediaType, "Content-Type", msg)
	}
	dry := false
	switch v := r.URL.Query().Get("dry_run"); v {
	case "", "false", "0":
	case "true", "1":
		dry = true
	default:
		return fail(w, o, http.StatusBadRequest, "dry_run", fmt.Sprintf("dry_run %q must be true or false", clip(v)))
	}
	limit := s.cfg.MaxSnapshotBytes
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
	d, vo, ok := s.verify(w, r, src, body, o)
	if !ok {
		return vo
	}
	o = vo
	ctx, cancel := context.WithTimeout(context.WithoutCancel(r.Context()), 2*time.Minute)
	defer cancel()
	resp, err := s.reconcile(ctx, snapshotRequest{source: name, snapshotID: d.WebhookID, body: body, format: format, dryRun: dry, actor: "hris:" + name})
	var ie *InputError
	switch {
	case errors.Is(err, errSnapshotDuplicate):
		writeJSON(w, http.StatusOK, acceptedBody{Status: "duplicate", EventID: "intake:snapshot:" + name + ":" + d.WebhookID})
		o.status, o.outcome = http.StatusOK, "duplicate"
		return o
	case errors.As(err, &ie):
		return fail(w, o, ie.Status, ie.Field, ie.Error())
	case err != nil:
		o.outcome, o.err = "unavailable", err
		w.Header().Set("Retry-After", "30")
		return fail(w, o, http.StatusServiceUnavailable, "", "the snapshot could not be reconciled; nothing was recorded, retry later")
	}
	code := http.StatusAccepted
	if dry {
		code = http.StatusOK
	}
	b, _ := protojson.MarshalOptions{UseProtoNames: true}.Marshal(resp)
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(code)
	w.Write(b)
	o.status, o.outcome = code, "reconciled"
	return o
}

func rosterContentType(ct string) (intakev1.RosterFormat, string) {
	if ct == "" {
		return 0, "Content-Type is missing; send text/csv or application/json"
	}
	mt, params, err := mime.ParseMediaType(ct)
	if cs, ok := params["charset"]; ok && !strings.EqualFold(cs, "utf-8") {
		return 0, fmt.Sprintf("charset %q is not supported; send UTF-8", clip(cs))
	}
	switch {
	case err != nil:
	case mt == "application/json":
		return intakev1.RosterFormat_ROSTER_FORMAT_JSON, ""
	case mt == "text/csv":
		return intakev1.RosterFormat_ROSTER_FORMAT_CSV, ""
	}
	return 0, fmt.Sprintf("Content-Type %q is not supported; send text/csv or application/json", clip(ct))
}

// snapshotIDOf derives the id of a roster reconciled over gRPC: the roster and its time.
func snapshotIDOf(body []byte, asOf time.Time) string {
	h := sha256.New()
	h.Write(body)
	fmt.Fprintf(h, "|%d", asOf.UnixNano())
	return "rpc-" + hex.EncodeToString(h.Sum(nil)[:12])
}
