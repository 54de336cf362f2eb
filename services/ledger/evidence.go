package ledger

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net/url"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/known/timestamppb"

	ledgerv1 "github.com/tenure-dev/tenure/proto/tenure/ledger/v1"
)

// Questions are the auditor questions Evidence answers, in report order.
var Questions = []string{"access", "terminations", "reviews", "breakglass", "temporary", "elevated", "thirdparty"}

var questionTitles = map[string]string{
	"access":       "Access held per worker: when granted, why, and who approved each stage",
	"terminations": "Terminated workers: HR termination, each account disabled and verified, time taken, open items",
	"reviews":      "Access review campaigns: reviewers, decisions, remediation and its confirmation",
	"breakglass":   "Break-glass uses and their post-use reviews",
	"temporary":    "Temporary (time-boxed) access and its removal",
	"elevated":     "Elevated (administrative) access to systems holding ePHI, and who approved it",
	"thirdparty":   "Third-party workforce: sponsor, vendor organisation, end date, removal confirmation",
}

// The evidence is computed from the ledger alone: every answer is what the recorded events
// say, so it can be re-derived from an archive or a verified chain. Payloads are read by
// field name (protoreflect), so event types that gain fields keep working.

// rec is one decoded ledger entry.
type rec struct {
	seq     int64
	typ     string
	worker  string
	actor   string
	at      time.Time
	msg     protoreflect.Message // nil when the payload type is unknown
	subject string
}

func (r *rec) str(name string) string {
	if r.msg == nil {
		return ""
	}
	fd := r.msg.Descriptor().Fields().ByName(protoreflect.Name(name))
	if fd == nil || fd.IsList() || fd.IsMap() {
		return ""
	}
	switch fd.Kind() {
	case protoreflect.StringKind:
		return r.msg.Get(fd).String()
	case protoreflect.EnumKind:
		ev := fd.Enum().Values().ByNumber(r.msg.Get(fd).Enum())
		if ev == nil {
			return ""
		}
		return enumShort(string(ev.Name()))
	case protoreflect.BoolKind:
		if r.msg.Get(fd).Bool() {
			return "true"
		}
		return ""
	case protoreflect.Int32Kind, protoreflect.Int64Kind:
		return fmt.Sprint(r.msg.Get(fd).Int())
	}
	return ""
}

func (r *rec) list(name string) []string {
	if r.msg == nil {
		return nil
	}
	fd := r.msg.Descriptor().Fields().ByName(protoreflect.Name(name))
	if fd == nil || !fd.IsList() || fd.Kind() != protoreflect.StringKind {
		return nil
	}
	l := r.msg.Get(fd).List()
	out := make([]string, l.Len())
	for i := range out {
		out[i] = l.Get(i).String()
	}
	return out
}

func (r *rec) time(name string) time.Time {
	if r.msg == nil {
		return time.Time{}
	}
	return msgTime(r.msg, name)
}

func msgTime(m protoreflect.Message, name string) time.Time {
	fd := m.Descriptor().Fields().ByName(protoreflect.Name(name))
	if fd == nil || fd.Kind() != protoreflect.MessageKind || fd.IsList() || !m.Has(fd) {
		return time.Time{}
	}
	ts, ok := m.Get(fd).Message().Interface().(*timestamppb.Timestamp)
	if !ok || ts == nil || (ts.Seconds == 0 && ts.Nanos == 0) {
		return time.Time{}
	}
	return ts.AsTime().UTC()
}

func (r *rec) sub(name string) protoreflect.Message {
	if r.msg == nil {
		return nil
	}
	fd := r.msg.Descriptor().Fields().ByName(protoreflect.Name(name))
	if fd == nil || fd.Kind() != protoreflect.MessageKind || fd.IsList() || !r.msg.Has(fd) {
		return nil
	}
	return r.msg.Get(fd).Message()
}

// approvals renders the repeated Approval field: "stage:approver@time" (or "auto:policy").
func (r *rec) approvals() []string {
	if r.msg == nil {
		return nil
	}
	fd := r.msg.Descriptor().Fields().ByName("approvals")
	if fd == nil || !fd.IsList() || fd.Kind() != protoreflect.MessageKind {
		return nil
	}
	l := r.msg.Get(fd).List()
	var out []string
	for i := range l.Len() {
		a := l.Get(i).Message()
		get := func(n string) string {
			f := a.Descriptor().Fields().ByName(protoreflect.Name(n))
			if f == nil {
				return ""
			}
			v := a.Get(f)
			if f.Kind() == protoreflect.BoolKind {
				return fmt.Sprint(v.Bool())
			}
			return v.String()
		}
		s := get("stage") + ":" + get("approver")
		if get("automatic") == "true" {
			s += " (automatic)"
		}
		if t := msgTime(a, "decided_at"); !t.IsZero() {
			s += "@" + fmtTime(t)
		}
		out = append(out, s)
	}
	return out
}

func enumShort(s string) string {
	for _, p := range []string{"WORKER_EVENT_KIND_", "ACCESS_DECISION_KIND_", "PROVISION_OP_", "PROVISION_OUTCOME_", "ACCOUNT_STATE_", "REVOCATION_KIND_", "LEAVER_CASE_STATUS_", "WORKER_TYPE_", "WORKER_STATUS_"} {
		s = strings.TrimPrefix(s, p)
	}
	return strings.ToLower(s)
}

func fmtTime(t time.Time) string {
	if t.IsZero() {
		return ""
	}
	return t.UTC().Format(time.RFC3339)
}

func fmtDur(d time.Duration) string {
	if d <= 0 {
		return ""
	}
	return d.Round(time.Second).String()
}

func yes(b bool) string {
	if b {
		return "yes"
	}
	return "no"
}

// scope is what one evidence computation covers.
type scope struct {
	from, to time.Time // [from, to); to is never zero
	workers  map[string]bool
	sample   int
	maxSeq   int64 // entries up to this seq (0: the head)
}

func (sc *scope) inPeriod(t time.Time) bool {
	return !t.Before(sc.from) && t.Before(sc.to)
}

func scopeOf(from, to *timestamppb.Timestamp, workers []string, sample int32, now time.Time) (*scope, error) {
	sc := &scope{to: now, sample: int(sample)}
	if from != nil {
		if err := from.CheckValid(); err != nil {
			return nil, status.Errorf(codes.InvalidArgument, "from: %v", err)
		}
		sc.from = from.AsTime()
	}
	if to != nil {
		if err := to.CheckValid(); err != nil {
			return nil, status.Errorf(codes.InvalidArgument, "to: %v", err)
		}
		sc.to = to.AsTime()
	}
	if sc.to.Before(sc.from) {
		return nil, status.Error(codes.InvalidArgument, "to is before from")
	}
	if sample < 0 {
		return nil, status.Error(codes.InvalidArgument, "sample must not be negative")
	}
	if len(workers) > 0 {
		sc.workers = map[string]bool{}
		for _, w := range workers {
			sc.workers[w] = true
		}
	}
	return sc, nil
}

// evidenceSubjects are the subjects (LIKE patterns) the answers read: provisioning commands
// other than disables, unverified results and the other revocation kinds are left out.
var evidenceSubjects = []string{"tenure.hr.%", "tenure.access.%", "tenure.alert.breakglass%", "tenure.alert.review%",
	"tenure.result.%.verified", "tenure.revocation.account\\_disabled.%", "tenure.case.%", "tenure.provision.%.disable"}

// loadRecs reads every entry with event_time before sc.to (about the scope's workers, plus
// entries about no worker), in ledger order, in tx.
func loadRecs(ctx context.Context, tx pgx.Tx, sc *scope) ([]*rec, int64, error) {
	var head int64
	if err := tx.QueryRow(ctx, "SELECT seq FROM head").Scan(&head); err != nil {
		return nil, 0, err
	}
	if sc.maxSeq > 0 {
		head = min(head, sc.maxSeq)
	}
	q := `SELECT seq, type, subject, worker_id, actor, event_time, coalesce(headers->'ce-dataschema'->>0, ''), payload
		FROM entries WHERE event_time < $1 AND seq <= $2 AND subject LIKE ANY($3)`
	args := []any{sc.to, head, evidenceSubjects}
	if sc.workers != nil {
		ws := make([]string, 0, len(sc.workers))
		for w := range sc.workers {
			ws = append(ws, w)
		}
		q += " AND (worker_id = ANY($4) OR worker_id = '')"
		args = append(args, ws)
	}
	rows, err := tx.Query(ctx, q+" ORDER BY seq", args...)
	if err != nil {
		return nil, 0, err
	}
	defer rows.Close()
	var out []*rec
	for rows.Next() {
		var (
			r       rec
			schema  string
			payload []byte
		)
		if err := rows.Scan(&r.seq, &r.typ, &r.subject, &r.worker, &r.actor, &r.at, &schema, &payload); err != nil {
			return nil, 0, err
		}
		r.at = r.at.UTC()
		if m := decodePayload(schema, payload); m != nil {
			r.msg = m.ProtoReflect()
		}
		out = append(out, &r)
	}
	return out, head, rows.Err()
}

// model is the state the recorded events describe.
type model struct {
	recs     []*rec
	grants   map[string]*grantState // by grant id (or a synthetic key)
	order    []*grantState
	requests map[string]*rec // latest request event by request id
	workers  map[string]*rec // latest WorkerEvent by worker (up to sc.to)
	// verified[grant id]: first verified provisioning result carrying it; removed[grant id]:
	// first verified result that no longer carries it.
	verified, removed map[string]time.Time
}

type grantState struct {
	grant  *rec
	revoke *rec
	key    string
}

func grantKey(r *rec) string {
	if id := r.str("grant_id"); id != "" {
		return id
	}
	return r.str("worker_id") + "\x00" + r.str("system") + "\x00" + r.str("package")
}

func buildModel(recs []*rec) *model {
	m := &model{recs: recs, grants: map[string]*grantState{}, requests: map[string]*rec{}, workers: map[string]*rec{},
		verified: map[string]time.Time{}, removed: map[string]time.Time{}}
	for _, r := range recs {
		switch {
		case r.typ == "tenure.access.grant":
			k := grantKey(r)
			g := &grantState{grant: r, key: k}
			m.grants[k] = g
			m.order = append(m.order, g)
		case r.typ == "tenure.access.revoke":
			if g := m.grants[grantKey(r)]; g != nil && g.revoke == nil {
				g.revoke = r
			}
		case strings.HasPrefix(r.typ, "tenure.access.request_"):
			if id := r.str("request_id"); id != "" {
				m.requests[id] = r
			}
		case strings.HasPrefix(r.typ, "tenure.hr."):
			if w := r.worker; w != "" {
				m.workers[w] = r
			}
		case strings.HasPrefix(r.typ, "tenure.result."):
			if r.str("outcome") != "verified" {
				continue
			}
			at := r.time("completed_at")
			if at.IsZero() {
				at = r.at
			}
			for _, id := range r.list("grant_ids") {
				if _, ok := m.verified[id]; !ok {
					m.verified[id] = at
				}
			}
			for _, id := range r.list("revoked_grant_ids") {
				if _, ok := m.removed[id]; !ok {
					m.removed[id] = at
				}
			}
		}
	}
	return m
}

// removalConfirmed returns when the removal of grant g was confirmed by reading the target
// back: a verified result naming it as revoked, or the worker's account verified disabled
// after the revoke.
func (m *model) removalConfirmed(g *grantState) time.Time {
	if id := g.grant.str("grant_id"); id != "" {
		if t, ok := m.removed[id]; ok {
			return t
		}
	}
	if g.revoke == nil {
		return time.Time{}
	}
	for _, r := range m.recs {
		if r.seq > g.revoke.seq && strings.HasPrefix(r.typ, "tenure.revocation.account_disabled") && r.worker == g.grant.worker &&
			r.str("verified") == "true" && (r.str("system") == "" || r.str("system") == g.grant.str("system")) {
			return r.time("occurred_at")
		}
	}
	return time.Time{}
}

func grantedAt(r *rec) time.Time {
	if t := r.time("decided_at"); !t.IsZero() {
		return t
	}
	return r.at
}

// heldDuring reports whether g was active at some time in [from, to).
func (g *grantState) heldDuring(sc *scope) bool {
	if !grantedAt(g.grant).Before(sc.to) {
		return false
	}
	return g.revoke == nil || !grantedAt(g.revoke).Before(sc.from)
}

func (m *model) approvalsOf(g *grantState) string {
	a := g.grant.approvals()
	if len(a) == 0 {
		if req := m.requests[g.grant.str("request_id")]; req != nil {
			a = req.approvals()
		}
	}
	return strings.Join(a, "; ")
}

// sampleWorkers picks n workers at random (all when n is 0 or covers them).
func sampleWorkers(ws []string, n int) map[string]bool {
	slices.Sort(ws)
	ws = slices.Compact(ws)
	if n > 0 && n < len(ws) {
		rand.Shuffle(len(ws), func(i, j int) { ws[i], ws[j] = ws[j], ws[i] })
		ws = ws[:n]
	}
	out := make(map[string]bool, len(ws))
	for _, w := range ws {
		out[w] = true
	}
	return out
}

type table struct {
	cols []string
	rows [][]string
}

func (t *table) add(cells ...string) { t.rows = append(t.rows, cells) }

func (m *model) answer(q string, sc *scope) (*table, error) {
	switch q {
	case "access", "elevated", "temporary":
		return m.accessTable(q, sc), nil
	case "terminations":
		return m.terminations(sc), nil
	case "reviews":
		return m.reviews(sc), nil
	case "breakglass":
		return m.breakglass(sc), nil
	case "thirdparty":
		return m.thirdParty(sc), nil
	}
	return nil, status.Errorf(codes.InvalidArgument, "unknown question %q (one of %s)", q, strings.Join(Questions, ", "))
}

func (m *model) accessTable(q string, sc *scope) *table {
	t := &table{cols: []string{"worker", "system", "package", "role", "granted_at", "why", "request_id", "requested_by", "justification",
		"approvals", "provisioned_verified_at", "elevated", "holds_ephi", "expires_at", "revoked_at", "revoke_reason", "removal_verified_at", "status", "grant_id", "ledger_seq"}}
	var cands []*grantState
	var ws []string
	for _, g := range m.order {
		if !g.heldDuring(sc) {
			continue
		}
		switch q {
		case "elevated":
			if g.grant.str("elevated") != "true" || g.grant.str("holds_ephi") != "true" {
				continue
			}
		case "temporary":
			if g.grant.time("expires_at").IsZero() {
				continue
			}
		}
		cands = append(cands, g)
		ws = append(ws, g.grant.worker)
	}
	pick := sampleWorkers(ws, sc.sample)
	for _, g := range cands {
		if !pick[g.grant.worker] {
			continue
		}
		r := g.grant
		why := "role " + r.str("role")
		switch {
		case r.str("role") == "" && r.str("request_id") != "":
			why = "request " + r.str("request_id")
		case r.str("role") == "":
			why = r.str("reason")
		}
		var requestedBy, justification string
		if req := m.requests[r.str("request_id")]; req != nil {
			requestedBy, justification = req.str("requested_by"), req.str("justification")
		}
		var revokedAt, reason, removal string
		st := "active"
		if g.revoke != nil && grantedAt(g.revoke).Before(sc.to) {
			revokedAt, reason = fmtTime(grantedAt(g.revoke)), g.revoke.str("reason")
			removal = fmtTime(m.removalConfirmed(g))
			st = "revoked"
			if removal == "" {
				st = "revoked, removal not yet verified"
			}
		} else if exp := r.time("expires_at"); !exp.IsZero() && exp.Before(sc.to) {
			st = "EXPIRED BUT NOT REVOKED"
		}
		var prov string
		if id := r.str("grant_id"); id != "" {
			if v, ok := m.verified[id]; ok {
				prov = fmtTime(v)
			}
		}
		t.add(r.worker, r.str("system"), r.str("package"), r.str("role"), fmtTime(grantedAt(r)), why, r.str("request_id"), requestedBy, justification,
			m.approvalsOf(g), prov, yes(r.str("elevated") == "true"), yes(r.str("holds_ephi") == "true"), fmtTime(r.time("expires_at")),
			revokedAt, reason, removal, st, r.str("grant_id"), fmt.Sprint(r.seq))
	}
	return t
}

func (m *model) terminations(sc *scope) *table {
	t := &table{cols: []string{"worker", "hr_event", "terminated_at", "case_id", "case_opened_at", "system", "connector", "account",
		"disabled_at", "verified", "time_to_disable", "case_completed_at", "status", "ledger_seq"}}
	type leaverT struct {
		r   *rec
		at  time.Time
		end int64 // seq of the next joiner (a rehire ends the case's scope)
	}
	var leavers []*leaverT
	var ws []string
	for _, r := range m.recs {
		if r.typ != "tenure.hr.leaver" {
			continue
		}
		at := r.time("effective_time")
		if at.IsZero() {
			at = r.at
		}
		if !sc.inPeriod(at) {
			continue
		}
		leavers = append(leavers, &leaverT{r: r, at: at})
		ws = append(ws, r.worker)
	}
	pick := sampleWorkers(ws, sc.sample)
	for _, l := range leavers {
		w := l.r.worker
		if !pick[w] {
			continue
		}
		var opened, completed *rec
		var caseID string
		type acct struct {
			link, connector, system, username string
			at                                time.Time
			verified                          bool
		}
		accts := map[string]*acct{}
		var order []string
		get := func(link string) *acct {
			if a := accts[link]; a != nil {
				return a
			}
			accts[link] = &acct{link: link}
			order = append(order, link)
			return accts[link]
		}
		for _, r := range m.recs {
			if r.seq <= l.r.seq || r.worker != w {
				continue
			}
			switch {
			case r.typ == "tenure.hr.joiner":
				goto done // rehired: later events belong to the new engagement
			case r.typ == "tenure.case.opened" && opened == nil:
				opened, caseID = r, r.str("case_id")
			case r.typ == "tenure.case.completed" && completed == nil && (caseID == "" || r.str("case_id") == caseID):
				completed = r
			case strings.HasPrefix(r.typ, "tenure.provision.") && r.str("op") == "disable" && (caseID == "" || r.str("case_id") == caseID):
				a := get(r.str("link_id"))
				a.connector = r.str("connector")
			case strings.HasPrefix(r.typ, "tenure.result.") && r.str("op") == "disable" && (caseID == "" || r.str("case_id") == caseID):
				a := get(r.str("link_id"))
				a.connector, a.username = r.str("connector"), r.str("username")
				if r.str("outcome") == "verified" && !a.verified {
					a.verified = true
					a.at = r.time("completed_at")
					if a.at.IsZero() {
						a.at = r.at
					}
				}
			case r.typ == "tenure.revocation.account_disabled":
				a := get(r.str("link_id"))
				a.system = r.str("system")
				if a.connector == "" {
					a.connector = r.str("connector")
				}
				if a.username == "" {
					a.username = r.str("username")
				}
				if r.str("verified") == "true" && !a.verified {
					a.verified, a.at = true, r.time("occurred_at")
				}
			}
		}
	done:
		var openedAt, completedAt string
		if opened != nil {
			openedAt = fmtTime(opened.time("opened_at"))
			if openedAt == "" {
				openedAt = fmtTime(opened.at)
			}
		}
		if completed != nil {
			completedAt = fmtTime(completed.time("completed_at"))
			if completedAt == "" {
				completedAt = fmtTime(completed.at)
			}
		}
		caseStatus := "OPEN"
		if completed != nil {
			caseStatus = "completed"
		}
		if len(order) == 0 {
			if opened == nil {
				caseStatus = "NO LEAVER CASE RECORDED"
			}
			t.add(w, l.r.str("hr_event_type"), fmtTime(l.at), caseID, openedAt, "", "", "", "", "", "", completedAt, caseStatus, fmt.Sprint(l.r.seq))
			continue
		}
		for _, link := range order {
			a := accts[link]
			st := caseStatus
			var took string
			if a.verified {
				took = fmtDur(a.at.Sub(l.at))
			} else {
				st = "OPEN: not verified disabled"
			}
			t.add(w, l.r.str("hr_event_type"), fmtTime(l.at), caseID, openedAt, a.system, a.connector, a.username, fmtTime(a.at), yes(a.verified), took,
				completedAt, st, fmt.Sprint(l.r.seq))
		}
	}
	return t
}

func (m *model) reviews(sc *scope) *table {
	t := &table{cols: []string{"campaign_id", "system", "started_by", "started_at", "deadline", "status", "items", "kept", "revoked",
		"revokes_confirmed", "escalated_items", "closed_at", "remediation_complete", "revoke_decisions", "reviewer_decisions"}}
	type camp struct {
		started, last *rec
		escalated     []string
		decided       []string
	}
	camps := map[string]*camp{}
	var order []string
	for _, r := range m.recs {
		if r.msg == nil || r.str("campaign_id") == "" || !(strings.Contains(r.typ, ".review_")) {
			continue
		}
		id := r.str("campaign_id")
		c := camps[id]
		if c == nil {
			c = &camp{}
			camps[id] = c
			order = append(order, id)
		}
		if strings.Contains(r.typ, "review_decided") {
			// One reviewer's keep or revoke (tenure.access.review_decided.<worker>).
			d := fmt.Sprintf("%s:%s %s by %s at %s", r.str("worker_id"), r.str("package"), r.str("decision"),
				firstNonEmpty(r.str("reviewer"), r.actor), fmtTime(firstTime(r.time("decided_at"), r.at)))
			if r.str("escalated") == "true" {
				d += " (escalated)"
			}
			if cm := r.str("comment"); cm != "" {
				d += ": " + cm
			}
			c.decided = append(c.decided, d)
			continue
		}
		if c.started == nil {
			c.started = r
		}
		if strings.Contains(r.typ, "escalated") {
			c.escalated = append(c.escalated, r.list("unanswered_grant_ids")...)
			if c.last == nil || !strings.Contains(c.last.typ, "closed") {
				c.last = r
			}
			continue
		}
		c.last = r
	}
	// Revokes the review caused: revoke decisions whose reason names the campaign.
	for _, id := range order {
		c := camps[id]
		started := c.started.time("started_at")
		if started.IsZero() {
			started = c.started.at
		}
		if !sc.inPeriod(started) {
			continue
		}
		var decisions []string
		for _, g := range m.order {
			if g.revoke != nil && strings.Contains(g.revoke.str("reason"), id) {
				d := g.grant.worker + ":" + g.grant.str("package") + " revoked by " + g.revoke.actor
				if v := m.removalConfirmed(g); !v.IsZero() {
					d += ", verified " + fmtTime(v)
				} else {
					d += ", NOT YET VERIFIED"
				}
				decisions = append(decisions, d)
			}
		}
		l := c.last
		closed := strings.Contains(l.typ, "closed")
		st := l.str("status")
		if st == "" {
			st = strings.TrimPrefix(l.typ[strings.LastIndexByte(l.typ, '.')+1:], "review_")
		}
		remediated := closed && l.str("revoked") == l.str("revokes_confirmed")
		slices.Sort(c.escalated)
		t.add(id, l.str("system"), c.started.str("started_by"), fmtTime(started), fmtTime(l.time("deadline")), st, l.str("items"), l.str("kept"), l.str("revoked"),
			l.str("revokes_confirmed"), strings.Join(slices.Compact(c.escalated), " "), fmtTime(l.time("closed_at")), yes(remediated), strings.Join(decisions, "; "),
			strings.Join(c.decided, "; "))
	}
	return t
}

func (m *model) breakglass(sc *scope) *table {
	t := &table{cols: []string{"worker", "system", "package", "reason_code", "justification", "invoked_by", "granted_at", "expires_at",
		"removed_at", "removal_verified_at", "review_id", "review_due", "review_status", "reviewed_by", "reviewed_at", "review_comment", "grant_id", "ledger_seq"}}
	var uses []*rec
	for _, r := range m.recs {
		if r.typ == "tenure.alert.breakglass" && sc.inPeriod(grantedAtBG(r)) {
			uses = append(uses, r)
		}
	}
	for _, u := range uses {
		gid, rid := u.str("grant_id"), u.str("review_id")
		var removedAt, removalVerified, reviewedBy, reviewedAt, comment string
		reviewStatus := "open"
		if g := m.grants[gid]; g != nil && g.revoke != nil {
			removedAt = fmtTime(grantedAt(g.revoke))
			removalVerified = fmtTime(m.removalConfirmed(g))
		}
		if due := u.time("review_due"); !due.IsZero() && due.Before(sc.to) {
			reviewStatus = "OVERDUE"
		}
		for _, r := range m.recs {
			if r.seq <= u.seq || !strings.Contains(r.typ, "breakglass") || r.typ == "tenure.alert.breakglass" {
				continue
			}
			if (rid != "" && r.str("review_id") == rid) || (gid != "" && r.str("grant_id") == gid) {
				switch {
				case strings.Contains(r.typ, "overdue"):
					if reviewStatus != "closed" {
						reviewStatus = "OVERDUE"
					}
				case strings.Contains(r.typ, "review"):
					reviewStatus = "closed"
					reviewedBy = firstNonEmpty(r.str("reviewed_by"), r.actor)
					reviewedAt = fmtTime(firstTime(r.time("reviewed_at"), r.at))
					comment = firstNonEmpty(r.str("review_comment"), r.str("comment"), r.str("justification"))
				}
			}
		}
		t.add(u.worker, u.str("system"), u.str("package"), u.str("reason_code"), u.str("justification"), u.str("invoked_by"), fmtTime(grantedAtBG(u)),
			fmtTime(u.time("expires_at")), removedAt, removalVerified, rid, fmtTime(u.time("review_due")), reviewStatus, reviewedBy, reviewedAt, comment, gid, fmt.Sprint(u.seq))
	}
	return t
}

func grantedAtBG(r *rec) time.Time { return firstTime(r.time("granted_at"), r.at) }

func firstNonEmpty(ss ...string) string {
	for _, s := range ss {
		if s != "" {
			return s
		}
	}
	return ""
}

func firstTime(ts ...time.Time) time.Time {
	for _, t := range ts {
		if !t.IsZero() {
			return t
		}
	}
	return time.Time{}
}

func (m *model) thirdParty(sc *scope) *table {
	t := &table{cols: []string{"worker", "worker_type", "vendor_org", "sponsor", "start_date", "end_date", "status", "terminated_at",
		"systems_held", "ephi_access", "baa_on_file", "accounts_disabled_verified_at", "removal_confirmed", "flags"}}
	baa := map[string]string{}
	for _, r := range m.recs {
		if !strings.Contains(r.typ, "baa") {
			continue
		}
		// The approval service publishes tenure.access.baa_recorded.<vendor org> with the
		// reference in the reason ("vendor X: BAA <reference>").
		org := r.str("vendor_org")
		if i := strings.LastIndexByte(r.subject, '.'); org == "" && i >= 0 {
			org, _ = url.PathUnescape(r.subject[i+1:])
		}
		ref := r.str("reference")
		if _, after, ok := strings.Cut(r.str("reason"), ": BAA "); ref == "" && ok {
			ref = after
		}
		if org != "" {
			baa[org] = firstNonEmpty(ref, "yes")
		}
	}
	var ws []string
	for w, r := range m.workers {
		wk := r.sub("worker")
		if wk == nil {
			continue
		}
		typ := (&rec{msg: wk}).str("worker_type")
		if typ == "contractor" || typ == "vendor" || typ == "temp" {
			ws = append(ws, w)
		}
	}
	pick := sampleWorkers(ws, sc.sample)
	names := make([]string, 0, len(pick))
	for w := range pick {
		names = append(names, w)
	}
	sort.Strings(names)
	for _, w := range names {
		r := m.workers[w]
		wk := &rec{msg: r.sub("worker")}
		var systems []string
		ephi := false
		for _, g := range m.order {
			if g.grant.worker == w && g.revoke == nil {
				systems = append(systems, g.grant.str("system"))
				ephi = ephi || g.grant.str("holds_ephi") == "true"
			}
		}
		st := wk.str("status")
		var terminated, disabled string
		removed := "n/a"
		if r.typ == "tenure.hr.leaver" {
			terminated = fmtTime(firstTime(r.time("effective_time"), r.at))
			removed = "NO"
			for _, c := range m.recs {
				if c.seq > r.seq && c.worker == w && c.typ == "tenure.case.completed" {
					disabled, removed = fmtTime(firstTime(c.time("completed_at"), c.at)), "yes"
					break
				}
			}
		}
		var flags []string
		if end, err := time.Parse("2006-01-02", wk.str("end_date")); err == nil && end.Before(sc.to) && r.typ != "tenure.hr.leaver" {
			flags = append(flags, "END DATE PASSED, NOT TERMINATED")
		}
		if wk.str("sponsor_id") == "" {
			flags = append(flags, "NO SPONSOR")
		}
		org := wk.str("vendor_org")
		b := baa[org]
		if ephi && b == "" {
			flags = append(flags, "EPHI ACCESS WITHOUT RECORDED BAA")
		}
		slices.Sort(systems)
		t.add(w, wk.str("worker_type"), org, wk.str("sponsor_id"), wk.str("start_date"), wk.str("end_date"), st, terminated,
			strings.Join(slices.Compact(systems), " "), yes(ephi), firstNonEmpty(b, "no"), disabled, removed, strings.Join(flags, "; "))
	}
	return t
}

// evidenceTables answers questions in one snapshot.
func (s *Service) evidenceTables(ctx context.Context, sc *scope, questions []string) (map[string]*table, int64, []int64, error) {
	tx, err := s.pool.BeginTx(ctx, pgx.TxOptions{IsoLevel: pgx.RepeatableRead, AccessMode: pgx.ReadOnly})
	if err != nil {
		return nil, 0, nil, err
	}
	defer tx.Rollback(context.WithoutCancel(ctx))
	recs, head, err := loadRecs(ctx, tx, sc)
	if err != nil {
		return nil, 0, nil, err
	}
	if sc.workers != nil {
		// Keep worker-less entries (reviews) but only the scope's workers otherwise.
		recs = slices.DeleteFunc(recs, func(r *rec) bool { return r.worker != "" && !sc.workers[r.worker] })
	}
	m := buildModel(recs)
	out := map[string]*table{}
	for _, q := range questions {
		t, err := m.answer(q, sc)
		if err != nil {
			return nil, 0, nil, err
		}
		out[q] = t
	}
	seqs := make([]int64, len(recs))
	for i, r := range recs {
		seqs[i] = r.seq
	}
	return out, head, seqs, nil
}

// Evidence answers one auditor question.
func (s *Service) Evidence(ctx context.Context, req *ledgerv1.EvidenceRequest) (*ledgerv1.EvidenceResponse, error) {
	sc, err := scopeOf(req.GetFrom(), req.GetTo(), req.GetWorkerIds(), req.GetSample(), time.Now())
	if err != nil {
		return nil, err
	}
	q := req.GetQuestion()
	if questionTitles[q] == "" {
		return nil, status.Errorf(codes.InvalidArgument, "unknown question %q (one of %s)", q, strings.Join(Questions, ", "))
	}
	ts, head, _, err := s.evidenceTables(ctx, sc, []string{q})
	if err != nil {
		if _, ok := status.FromError(err); ok {
			return nil, err
		}
		return nil, s.internal(ctx, "evidence", err)
	}
	return tableResponse(q, ts[q], head), nil
}

func tableResponse(q string, t *table, head int64) *ledgerv1.EvidenceResponse {
	res := &ledgerv1.EvidenceResponse{Question: q, Title: questionTitles[q], Columns: t.cols, HeadSeq: head}
	for _, r := range t.rows {
		res.Rows = append(res.Rows, &ledgerv1.EvidenceRow{Cells: r})
	}
	return res
}

var _ proto.Message = (*ledgerv1.EvidenceResponse)(nil)
