package intake

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/mail"
	"reflect"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	eventsv1 "github.com/tenure-dev/tenure/proto/tenure/events/v1"
)

// HREvent is one HR lifecycle event in tenure's canonical JSON format, the body of
// POST /webhooks/{source} for sources with format "canonical" and what every other format's
// adapter translates into:
//
//	{
//	  "type": "hire",                   // required, see below
//	  "worker": {                       // required
//	    "worker_id":   "E1001",         // required: the immutable HR id
//	    "worker_type": "employee",      // employee|contractor|temp|student|intern|volunteer|vendor;
//	                                    // required for hire, rehire and conversion
//	    "given_name":  "Ada",
//	    "family_name": "Lovelace",
//	    "email":       "ada@example.org",  // a bare address
//	    "job_code":    "RN-2",
//	    "department":  "Cardiology",
//	    "manager_id":  "E0042",
//	    "location":    "Boston",
//	    "start_date":  "2025-03-01",    // YYYY-MM-DD
//	    "end_date":    "2025-12-31",    // YYYY-MM-DD, not before start_date
//	    "sponsor_id":  "E0042",         // contractors and vendor staff: the sponsoring employee
//	    "vendor_org":  "Acme Staffing"  // vendor staff: their organisation
//	  },
//	  "effective_time": "2025-03-01T09:00:00Z",  // optional RFC 3339; default: time received
//	  "reason": "resignation"           // optional free text, kept in the worker history
//	}
//
// Types and what they publish (subject tenure.hr.<kind>.<worker_id>):
//
//	hire, rehire                         joiner       status active
//	job_change, department_change,
//	manager_change, conversion           mover        status unchanged (active if unknown)
//	termination, contract_end            leaver       status terminated
//	leave_start                          leave_start  status on_leave
//	leave_end                            leave_end    status active
//	termination_rescinded                rescind      status active
//
// Unknown fields anywhere are rejected (400). A hire or rehire carries the worker's full
// record. For every other type an empty or omitted worker field means "unchanged": it is
// filled from the worker registry, so a termination that carries only the worker id still
// tells downstream services who left (email, names, job code, ...).
type HREvent struct {
	Type          string   `json:"type"`
	Worker        HRWorker `json:"worker"`
	EffectiveTime string   `json:"effective_time,omitempty"`
	Reason        string   `json:"reason,omitempty"`
}

// HRWorker is the worker record of an HREvent. Every field is a string; see HREvent.
type HRWorker struct {
	WorkerID   string `json:"worker_id"`
	WorkerType string `json:"worker_type,omitempty"`
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

// eventType is what a canonical type means.
type eventType struct {
	kind  eventsv1.WorkerEventKind
	token string // subject token
	// status after the event; UNSPECIFIED keeps the registry's status.
	status eventsv1.WorkerStatus
	// full: the event carries the whole record (no fill from the registry).
	full bool
	// needsType: worker_type is required.
	needsType bool
}

var eventTypes = map[string]eventType{
	"hire":                  {eventsv1.WorkerEventKind_WORKER_EVENT_KIND_JOINER, "joiner", eventsv1.WorkerStatus_WORKER_STATUS_ACTIVE, true, true},
	"rehire":                {eventsv1.WorkerEventKind_WORKER_EVENT_KIND_JOINER, "joiner", eventsv1.WorkerStatus_WORKER_STATUS_ACTIVE, true, true},
	"job_change":            {eventsv1.WorkerEventKind_WORKER_EVENT_KIND_MOVER, "mover", eventsv1.WorkerStatus_WORKER_STATUS_UNSPECIFIED, false, false},
	"department_change":     {eventsv1.WorkerEventKind_WORKER_EVENT_KIND_MOVER, "mover", eventsv1.WorkerStatus_WORKER_STATUS_UNSPECIFIED, false, false},
	"manager_change":        {eventsv1.WorkerEventKind_WORKER_EVENT_KIND_MOVER, "mover", eventsv1.WorkerStatus_WORKER_STATUS_UNSPECIFIED, false, false},
	"conversion":            {eventsv1.WorkerEventKind_WORKER_EVENT_KIND_MOVER, "mover", eventsv1.WorkerStatus_WORKER_STATUS_UNSPECIFIED, false, true},
	"termination":           {eventsv1.WorkerEventKind_WORKER_EVENT_KIND_LEAVER, "leaver", eventsv1.WorkerStatus_WORKER_STATUS_TERMINATED, false, false},
	"contract_end":          {eventsv1.WorkerEventKind_WORKER_EVENT_KIND_LEAVER, "leaver", eventsv1.WorkerStatus_WORKER_STATUS_TERMINATED, false, false},
	"leave_start":           {eventsv1.WorkerEventKind_WORKER_EVENT_KIND_LEAVE_START, "leave_start", eventsv1.WorkerStatus_WORKER_STATUS_ON_LEAVE, false, false},
	"leave_end":             {eventsv1.WorkerEventKind_WORKER_EVENT_KIND_LEAVE_END, "leave_end", eventsv1.WorkerStatus_WORKER_STATUS_ACTIVE, false, false},
	"termination_rescinded": {eventsv1.WorkerEventKind_WORKER_EVENT_KIND_RESCIND, "rescind", eventsv1.WorkerStatus_WORKER_STATUS_ACTIVE, false, false},
}

var typeNames = []string{"hire", "rehire", "job_change", "department_change", "manager_change", "conversion",
	"termination", "contract_end", "leave_start", "leave_end", "termination_rescinded"}

var workerTypes = map[string]eventsv1.WorkerType{
	"employee":   eventsv1.WorkerType_WORKER_TYPE_EMPLOYEE,
	"contractor": eventsv1.WorkerType_WORKER_TYPE_CONTRACTOR,
	"temp":       eventsv1.WorkerType_WORKER_TYPE_TEMP,
	"student":    eventsv1.WorkerType_WORKER_TYPE_STUDENT,
	"intern":     eventsv1.WorkerType_WORKER_TYPE_INTERN,
	"volunteer":  eventsv1.WorkerType_WORKER_TYPE_VOLUNTEER,
	"vendor":     eventsv1.WorkerType_WORKER_TYPE_VENDOR,
}

var workerTypeNames = []string{"employee", "contractor", "temp", "student", "intern", "volunteer", "vendor"}

// canonicalAdapter decodes HREvent JSON strictly.
type canonicalAdapter struct{}

func (canonicalAdapter) Decode(_ context.Context, d Delivery) (HREvent, error) {
	var ev HREvent
	if err := DecodeStrictJSON(d.Body, &ev); err != nil {
		return HREvent{}, err
	}
	return ev, nil
}

// DecodeStrictJSON decodes exactly one JSON value from body into v, rejecting unknown fields
// and trailing data. Errors are 400 InputErrors naming the field or byte offset.
func DecodeStrictJSON(body []byte, v any) error {
	if len(bytes.TrimSpace(body)) == 0 {
		return BadRequest("", "the body is empty; expected a JSON object")
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return jsonError(body, v, err)
	}
	end := dec.InputOffset()
	var extra json.RawMessage
	if err := dec.Decode(&extra); !errors.Is(err, io.EOF) {
		return BadRequest("", "the body holds more than one JSON value: unexpected data at offset %d", end)
	}
	return nil
}

func jsonError(body []byte, v any, err error) error {
	var syn *json.SyntaxError
	var typ *json.UnmarshalTypeError
	switch {
	case errors.As(err, &syn):
		return BadRequest("", "malformed JSON at offset %d: %s", syn.Offset, strings.TrimPrefix(syn.Error(), "json: "))
	case errors.As(err, &typ):
		field := typ.Field
		if field == "" {
			return BadRequest("", "the body must be a JSON object, not %s", jsonKind(typ.Value))
		}
		return BadRequest(field, "%s must be %s, not %s (offset %d)", field, goKind(typ.Type), jsonKind(typ.Value), typ.Offset)
	case errors.Is(err, io.ErrUnexpectedEOF):
		return BadRequest("", "malformed JSON: the body ends before the value is complete (offset %d)", len(body))
	}
	if name, ok := strings.CutPrefix(err.Error(), "json: unknown field "); ok {
		name = strings.Trim(name, `"`)
		field := unknownFieldPath(body, reflect.TypeOf(v), name)
		return BadRequest(field, "unknown field %q", field)
	}
	return BadRequest("", "malformed JSON: %s", strings.TrimPrefix(err.Error(), "json: "))
}

// unknownFieldPath finds where an unknown field sits, since encoding/json names only the
// key: it walks the body's objects alongside the struct type and returns the dotted path of
// the first key the type lacks (or name when it cannot tell).
func unknownFieldPath(body []byte, t reflect.Type, name string) string {
	for t != nil && t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	var walk func(raw json.RawMessage, t reflect.Type, prefix string) string
	walk = func(raw json.RawMessage, t reflect.Type, prefix string) string {
		for t.Kind() == reflect.Pointer {
			t = t.Elem()
		}
		if t.Kind() != reflect.Struct {
			return ""
		}
		var obj map[string]json.RawMessage
		if json.Unmarshal(raw, &obj) != nil {
			return ""
		}
		fields := map[string]reflect.Type{}
		for i := 0; i < t.NumField(); i++ {
			f := t.Field(i)
			tag, _, _ := strings.Cut(f.Tag.Get("json"), ",")
			if tag == "" {
				tag = f.Name
			}
			fields[strings.ToLower(tag)] = f.Type
		}
		for k, sub := range obj {
			ft, ok := fields[strings.ToLower(k)]
			if !ok {
				if k == name {
					return prefix + k
				}
				continue
			}
			if p := walk(sub, ft, prefix+k+"."); p != "" {
				return p
			}
		}
		return ""
	}
	if t != nil {
		if p := walk(body, t, ""); p != "" {
			return p
		}
	}
	return name
}

func jsonKind(v string) string {
	switch v {
	case "object", "array":
		return "an " + v
	case "":
		return "that value"
	default:
		return "a " + v
	}
}

func goKind(t reflect.Type) string {
	switch t.Kind() {
	case reflect.String:
		return "a string"
	case reflect.Struct, reflect.Map:
		return "an object"
	case reflect.Slice, reflect.Array:
		return "an array"
	case reflect.Bool:
		return "a boolean"
	default:
		return "a number"
	}
}

// Limits on canonical fields.
const (
	maxIDLen     = 200
	maxFieldLen  = 512
	maxReasonLen = 2000
)

// change is a validated HR event.
type change struct {
	hrType        string
	typ           eventType
	worker        *eventsv1.Worker
	effectiveTime time.Time // zero: the time received
	reason        string
}

// validate checks an HREvent and converts it. Errors are 422 InputErrors naming the field.
func validate(ev HREvent) (change, error) {
	if ev.Type == "" {
		return change{}, Unprocessable("type", "type is required (one of %s)", strings.Join(typeNames, ", "))
	}
	et, ok := eventTypes[ev.Type]
	if !ok {
		return change{}, Unprocessable("type", "unknown type %q (known: %s)", clip(ev.Type), strings.Join(typeNames, ", "))
	}
	w := ev.Worker
	if w.WorkerID == "" {
		return change{}, Unprocessable("worker.worker_id", "worker.worker_id is required")
	}
	if err := checkID("worker.worker_id", w.WorkerID); err != nil {
		return change{}, err
	}
	out := &eventsv1.Worker{WorkerId: w.WorkerID}
	if w.WorkerType == "" {
		if et.needsType {
			return change{}, Unprocessable("worker.worker_type", "worker.worker_type is required for %s (one of %s)", ev.Type, strings.Join(workerTypeNames, ", "))
		}
	} else if wt, ok := workerTypes[w.WorkerType]; ok {
		out.WorkerType = wt
	} else {
		return change{}, Unprocessable("worker.worker_type", "unknown worker.worker_type %q (known: %s)", clip(w.WorkerType), strings.Join(workerTypeNames, ", "))
	}
	texts := []struct {
		field string
		val   string
		dst   *string
	}{
		{"worker.given_name", w.GivenName, &out.GivenName},
		{"worker.family_name", w.FamilyName, &out.FamilyName},
		{"worker.email", w.Email, &out.Email},
		{"worker.job_code", w.JobCode, &out.JobCode},
		{"worker.department", w.Department, &out.Department},
		{"worker.manager_id", w.ManagerID, &out.ManagerId},
		{"worker.location", w.Location, &out.Location},
		{"worker.start_date", w.StartDate, &out.StartDate},
		{"worker.end_date", w.EndDate, &out.EndDate},
		{"worker.sponsor_id", w.SponsorID, &out.SponsorId},
		{"worker.vendor_org", w.VendorOrg, &out.VendorOrg},
	}
	for _, f := range texts {
		if err := checkText(f.field, f.val, maxFieldLen); err != nil {
			return change{}, err
		}
		*f.dst = f.val
	}
	if w.Email != "" {
		a, err := mail.ParseAddress(w.Email)
		if err != nil || a.Address != w.Email || a.Name != "" {
			return change{}, Unprocessable("worker.email", "worker.email %q is not a bare email address", clip(w.Email))
		}
	}
	var start, end time.Time
	if w.StartDate != "" {
		var err error
		if start, err = time.Parse(time.DateOnly, w.StartDate); err != nil {
			return change{}, Unprocessable("worker.start_date", "worker.start_date %q is not a date YYYY-MM-DD", clip(w.StartDate))
		}
	}
	if w.EndDate != "" {
		var err error
		if end, err = time.Parse(time.DateOnly, w.EndDate); err != nil {
			return change{}, Unprocessable("worker.end_date", "worker.end_date %q is not a date YYYY-MM-DD", clip(w.EndDate))
		}
	}
	if !start.IsZero() && !end.IsZero() && end.Before(start) {
		return change{}, Unprocessable("worker.end_date", "worker.end_date %s is before worker.start_date %s", w.EndDate, w.StartDate)
	}
	if err := checkWorkerRefs(out); err != nil {
		return change{}, err
	}
	c := change{hrType: ev.Type, typ: et, worker: out}
	if ev.EffectiveTime != "" {
		t, err := time.Parse(time.RFC3339Nano, ev.EffectiveTime)
		if err != nil {
			return change{}, Unprocessable("effective_time", "effective_time %q is not an RFC 3339 time such as 2025-03-01T09:00:00Z", clip(ev.EffectiveTime))
		}
		c.effectiveTime = t
	}
	if err := checkText("reason", ev.Reason, maxReasonLen); err != nil {
		return change{}, err
	}
	c.reason = ev.Reason
	return c, nil
}

// checkWorkerRefs rejects a worker who is their own manager or sponsor: HR data entry slips
// that would make the worker approve their own access.
func checkWorkerRefs(w *eventsv1.Worker) error {
	if w.ManagerId != "" && w.ManagerId == w.WorkerId {
		return Unprocessable("worker.manager_id", "worker.manager_id %q is the worker itself", clip(w.ManagerId))
	}
	if w.SponsorId != "" && w.SponsorId == w.WorkerId {
		return Unprocessable("worker.sponsor_id", "worker.sponsor_id %q is the worker itself", clip(w.SponsorId))
	}
	return nil
}

func checkID(field, s string) error {
	if err := checkText(field, s, maxIDLen); err != nil {
		return err
	}
	if strings.TrimSpace(s) != s {
		return Unprocessable(field, "%s %q has leading or trailing spaces", field, clip(s))
	}
	return nil
}

// checkText checks a text field: UTF-8, at most max characters (as the JSON Schema counts
// them), no control characters but tab.
func checkText(field, s string, max int) error {
	if !utf8.ValidString(s) {
		return Unprocessable(field, "%s is not valid UTF-8", field)
	}
	if n := utf8.RuneCountInString(s); n > max {
		return Unprocessable(field, "%s is longer than %d characters (%d)", field, max, n)
	}
	if strings.ContainsFunc(s, func(r rune) bool { return unicode.IsControl(r) && r != '\t' }) {
		return Unprocessable(field, "%s contains control characters", field)
	}
	return nil
}

// clip shortens a value quoted back in an error.
func clip(s string) string {
	if len(s) <= 64 {
		return s
	}
	i := 64
	for i > 0 && !utf8.RuneStart(s[i]) {
		i--
	}
	return s[:i] + "…"
}

// fill copies the registry's value into every empty field of w (not worker_id or status).
func fill(w, from *eventsv1.Worker) {
	if from == nil {
		return
	}
	if w.WorkerType == eventsv1.WorkerType_WORKER_TYPE_UNSPECIFIED {
		w.WorkerType = from.WorkerType
	}
	for _, p := range []struct{ dst, src *string }{
		{&w.GivenName, &from.GivenName}, {&w.FamilyName, &from.FamilyName}, {&w.Email, &from.Email},
		{&w.JobCode, &from.JobCode}, {&w.Department, &from.Department}, {&w.ManagerId, &from.ManagerId},
		{&w.Location, &from.Location}, {&w.StartDate, &from.StartDate}, {&w.EndDate, &from.EndDate},
		{&w.SponsorId, &from.SponsorId}, {&w.VendorOrg, &from.VendorOrg},
	} {
		if *p.dst == "" {
			*p.dst = *p.src
		}
	}
}

// statusAfter is the worker's status after an event, given the registry's current status.
func statusAfter(et eventType, current eventsv1.WorkerStatus) eventsv1.WorkerStatus {
	if et.status != eventsv1.WorkerStatus_WORKER_STATUS_UNSPECIFIED {
		return et.status
	}
	// A mover keeps the worker on leave or terminated: only a rehire, leave_end or rescind
	// brings a worker back, so a late job change never re-activates a leaver.
	if current == eventsv1.WorkerStatus_WORKER_STATUS_UNSPECIFIED {
		return eventsv1.WorkerStatus_WORKER_STATUS_ACTIVE
	}
	return current
}
