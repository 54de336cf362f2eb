package intake

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"reflect"
	"strconv"
	"strings"
	"time"
	"unicode"
)

// BambooHR webhooks, both data structures BambooHR offers:
//
//   - event-based (thin): {"type":"employee.updated","timestamp":"2026-01-31T18:42:00+0000",
//     "data":{"companyId":"12345","employeeId":"67890","changedFields":["jobTitle"]}}; the
//     record is fetched from GET {api}/employees/{id}?fields=...
//   - field-based (global/permissioned): {"employees":[{"id":"9","action":"Updated",
//     "changedFields":["Job Title"],"fields":{"First Name":"Ada",...}}]}; the record is in the
//     payload, one or more employees per delivery.
//
// Either comes as JSON or, when the webhook is set to "Form Post", form-encoded with bracket
// nesting (data[employeeId]=67890&data[changedFields][0]=jobTitle; form.go).
//
// Deliveries are signed with the webhook's private key: X-BambooHR-Signature is the hex
// HMAC-SHA256 of the raw body followed by the X-BambooHR-Timestamp value (Unix seconds).
// The mapping is in docs/hris-adapters.md.

// BambooHR signature headers.
const (
	HeaderBambooHRSignature = "X-BambooHR-Signature"
	HeaderBambooHRTimestamp = "X-BambooHR-Timestamp"
)

type bambooHRAdapter struct {
	secrets   [][]byte
	tolerance time.Duration
	now       func() time.Time
	api       *hrisClient
}

var (
	_ RequestVerifier = (*bambooHRAdapter)(nil)
	_ BatchAdapter    = (*bambooHRAdapter)(nil)
	_ FormAdapter     = (*bambooHRAdapter)(nil)
)

func newBambooHRAdapter(_ string, sc SourceConfig) (Adapter, error) {
	api, err := newHRISClient("BambooHR", sc.API, func(a APIConfig) (string, string) { return a.Token, "x" })
	if err != nil {
		return nil, err
	}
	return &bambooHRAdapter{secrets: rawSecrets(sc.Secrets), tolerance: sc.Tolerance, now: clockOf(sc), api: api}, nil
}

// SignBambooHR returns the X-BambooHR-Signature of body sent at ts (tests and tools).
func SignBambooHR(key string, body []byte, ts string) string {
	return hex.EncodeToString(bambooMAC([]byte(key), body, ts))
}

func bambooMAC(key, body []byte, ts string) []byte {
	m := hmac.New(sha256.New, key)
	m.Write(body)
	m.Write([]byte(ts))
	return m.Sum(nil)
}

// VerifyRequest checks X-BambooHR-Signature. BambooHR sends no delivery id, so the id is the
// body's SHA-256: a retry carries the same body, and the event's own timestamp and employee
// make two different events differ.
func (a *bambooHRAdapter) VerifyRequest(h http.Header, body []byte) (string, time.Time, error) {
	ts, sig := h.Get(HeaderBambooHRTimestamp), h.Get(HeaderBambooHRSignature)
	if ts == "" {
		return "", time.Time{}, unauthorized(HeaderBambooHRTimestamp, "missing BambooHR header %s", HeaderBambooHRTimestamp)
	}
	if sig == "" {
		return "", time.Time{}, unauthorized(HeaderBambooHRSignature, "missing BambooHR header %s", HeaderBambooHRSignature)
	}
	secs, err := strconv.ParseInt(ts, 10, 64)
	if err != nil {
		return "", time.Time{}, unauthorized(HeaderBambooHRTimestamp, "%s is not a Unix time in seconds", HeaderBambooHRTimestamp)
	}
	t := time.Unix(secs, 0)
	if err := checkSkew(HeaderBambooHRTimestamp, t, a.now(), a.tolerance); err != nil {
		return "", t, err
	}
	got, err := hex.DecodeString(strings.TrimSpace(sig))
	if err != nil || !secretsMatch(a.secrets, got, func(k []byte) []byte { return bambooMAC(k, body, ts) }) {
		return "", t, unauthorized(HeaderBambooHRSignature, "%s does not match a configured key", HeaderBambooHRSignature)
	}
	sum := sha256.Sum256(body)
	return "bamboohr-" + hex.EncodeToString(sum[:16]), t, nil
}

// bambooPayload is either structure; unknown fields are ignored (BambooHR adds fields to its
// payloads without notice, and a rejected delivery would be retried for days), but the fields
// read must have the documented types.
type bambooPayload struct {
	// Event-based.
	Type      string      `json:"type"`
	Timestamp string      `json:"timestamp"`
	Data      *bambooData `json:"data"`
	// Field-based.
	Employees []bambooEmployee `json:"employees"`
	// Fields, at the top of a field-based payload, maps the webhook's field name aliases to
	// BambooHR's field names (a webhook may rename "First Name" to "fn").
	Fields map[string]flexString `json:"fields"`
}

type bambooData struct {
	CompanyID     flexString `json:"companyId"`
	EmployeeID    flexString `json:"employeeId"`
	ChangedFields []string   `json:"changedFields"`
}

type bambooEmployee struct {
	ID            flexString                 `json:"id"`
	Action        string                     `json:"action"`
	Timestamp     string                     `json:"timestamp"`
	ChangedFields []string                   `json:"changedFields"`
	Fields        map[string]json.RawMessage `json:"fields"`
}

// flexString accepts a JSON string or number (BambooHR sends ids both ways) and null.
type flexString string

func (f *flexString) UnmarshalJSON(b []byte) error {
	b = bytes.TrimSpace(b)
	switch {
	case string(b) == "null":
		*f = ""
	case len(b) > 0 && b[0] == '"':
		var s string
		if err := json.Unmarshal(b, &s); err != nil {
			return err
		}
		*f = flexString(s)
	case len(b) > 0 && (b[0] == '-' || (b[0] >= '0' && b[0] <= '9')):
		var n json.Number
		if err := json.Unmarshal(b, &n); err != nil {
			return err
		}
		*f = flexString(n.String())
	default:
		return &json.UnmarshalTypeError{Value: "non-string", Type: stringType}
	}
	return nil
}

func (a *bambooHRAdapter) Decode(ctx context.Context, d Delivery) (HREvent, error) {
	evs, err := a.DecodeBatch(ctx, d)
	if err != nil {
		return HREvent{}, err
	}
	return evs[0], nil
}

// AcceptsForm: BambooHR posts either structure as JSON or as a form ("Form Post").
func (a *bambooHRAdapter) AcceptsForm() {}

func (a *bambooHRAdapter) DecodeBatch(ctx context.Context, d Delivery) ([]HREvent, error) {
	body, err := formOrJSON(d)
	if err != nil {
		return nil, err
	}
	var p bambooPayload
	if err := decodeLenientJSON(body, &p); err != nil {
		return nil, err
	}
	switch {
	case p.Data != nil && p.Type != "":
		ev, err := a.eventBased(ctx, p)
		if err != nil {
			return nil, err
		}
		return []HREvent{ev}, nil
	case p.Employees != nil:
		if len(p.Employees) == 0 {
			return nil, Unprocessable("employees", "employees is empty")
		}
		if len(p.Employees) > maxBatch {
			return nil, Unprocessable("employees", "more than %d employees in one delivery", maxBatch)
		}
		out := make([]HREvent, 0, len(p.Employees))
		seen := map[string]bool{}
		aliases := bambooAliases(p.Fields)
		for i, e := range p.Employees {
			where := fmt.Sprintf("employees[%d]", i)
			ev, err := fieldBased(where, e, aliases)
			if err != nil {
				return nil, err
			}
			if seen[ev.Worker.WorkerID] {
				return nil, Unprocessable(where+".id", "employee %q appears twice in one delivery", clip(ev.Worker.WorkerID))
			}
			seen[ev.Worker.WorkerID] = true
			out = append(out, ev)
		}
		return out, nil
	}
	return nil, BadRequest("", `not a BambooHR webhook: expected "type" and "data" (event-based) or "employees" (field-based)`)
}

// maxBatch bounds the events of one delivery.
const maxBatch = 500

// bambooFields is what tenure asks the BambooHR API for.
var bambooFields = []string{"employeeNumber", "firstName", "lastName", "workEmail", "jobTitle", "department",
	"location", "supervisorEId", "hireDate", "terminationDate", "status", "employmentHistoryStatus"}

func (a *bambooHRAdapter) eventBased(ctx context.Context, p bambooPayload) (HREvent, error) {
	id := strings.TrimSpace(string(p.Data.EmployeeID))
	if id == "" {
		return HREvent{}, Unprocessable("data.employeeId", "data.employeeId is required")
	}
	if err := checkID("data.employeeId", id); err != nil {
		return HREvent{}, err
	}
	eff, err := bambooTime("timestamp", p.Timestamp)
	if err != nil {
		return HREvent{}, err
	}
	switch p.Type {
	case "employee.deleted":
		// The record is gone: nothing to fetch. The registry fills in the rest.
		return HREvent{Type: "termination", Worker: HRWorker{WorkerID: id}, EffectiveTime: eff, Reason: "deleted in BambooHR"}, nil
	case "employee.created", "employee.updated":
	default:
		return HREvent{}, Unprocessable("type", "unknown BambooHR event type %q (known: employee.created, employee.updated, employee.deleted)", clip(p.Type))
	}
	var rec map[string]flexString
	q := url.Values{"fields": {strings.Join(bambooFields, ",")}, "onlyCurrent": {"true"}}
	if err := a.api.do(ctx, http.MethodGet, "/employees/"+url.PathEscape(id)+"?"+q.Encode(), nil, &rec); err != nil {
		return HREvent{}, fetchedFor(err, id)
	}
	action := "Updated"
	if p.Type == "employee.created" {
		action = "Created"
	}
	return bambooEvent("data", id, action, eff, p.Data.ChangedFields, normalizeFields(rec))
}

func fieldBased(where string, e bambooEmployee, aliases map[string]string) (HREvent, error) {
	id := strings.TrimSpace(string(e.ID))
	if id == "" {
		return HREvent{}, Unprocessable(where+".id", "%s.id is required", where)
	}
	if err := checkID(where+".id", id); err != nil {
		return HREvent{}, err
	}
	eff, err := bambooTime(where+".timestamp", e.Timestamp)
	if err != nil {
		return HREvent{}, err
	}
	if e.Action == "Deleted" {
		return HREvent{Type: "termination", Worker: HRWorker{WorkerID: id}, EffectiveTime: eff, Reason: "deleted in BambooHR"}, nil
	}
	if e.Action != "Created" && e.Action != "Updated" {
		return HREvent{}, Unprocessable(where+".action", "unknown action %q (known: Created, Updated, Deleted)", clip(e.Action))
	}
	fields, err := bambooFieldValues(where, e.Fields, aliases)
	if err != nil {
		return HREvent{}, err
	}
	changed := make([]string, len(e.ChangedFields))
	for i, c := range e.ChangedFields {
		changed[i] = unalias(c, aliases)
	}
	return bambooEvent(where, id, e.Action, eff, changed, fields)
}

// bambooFieldValues reads an employee's fields in either shape seen from BambooHR: a flat
// value ("First Name": "Bryony", a number, or null) or a value object ("firstName":
// {"value": "Bryony"}). Keys go through the payload's alias map, then normalizeFields.
// Errors name the employee index and the field as the payload spells it.
func bambooFieldValues(where string, raw map[string]json.RawMessage, aliases map[string]string) (map[string]string, error) {
	flat := make(map[string]flexString, len(raw))
	for k, v := range raw {
		var f flexString
		if err := json.Unmarshal(v, &f); err != nil {
			var obj struct {
				Value *flexString `json:"value"`
			}
			if json.Unmarshal(v, &obj) != nil || obj.Value == nil {
				field := where + ".fields." + k
				return nil, BadRequest(field, "%s must be a string, a number, null or an object {\"value\": ...}", field)
			}
			f = *obj.Value
		}
		flat[unalias(k, aliases)] = f
	}
	return normalizeFields(flat), nil
}

// bambooAliases reads the top-level alias map (alias → BambooHR field name). Either
// direction is accepted, since integrations write it both ways: the side that names a field
// tenure reads is the field.
func bambooAliases(m map[string]flexString) map[string]string {
	if len(m) == 0 {
		return nil
	}
	known := map[string]bool{}
	for _, f := range bambooFields {
		known[normKey(f)] = true
	}
	for _, f := range []string{"First Name", "Last Name", "Work Email", "Job Title", "Department", "Location",
		"Hire Date", "Termination Date", "Status", "Employment Status", "Reporting to", "Preferred Name", "Division"} {
		known[normKey(f)] = true
	}
	out := map[string]string{}
	for a, n := range m {
		name := string(n)
		switch {
		case known[normKey(name)]:
			out[normKey(a)] = name
		case known[normKey(a)]:
			out[normKey(name)] = a
		}
	}
	return out
}

// unalias returns the BambooHR field name for a payload key that is an alias.
func unalias(k string, aliases map[string]string) string {
	if n, ok := aliases[normKey(k)]; ok {
		return n
	}
	return k
}

// normalizeFields keys a record by its lowercased alphanumeric field name, so the API's
// "jobTitle" and the field-based "Job Title" are one key.
func normalizeFields(m map[string]flexString) map[string]string {
	out := make(map[string]string, len(m))
	for k, v := range m {
		out[normKey(k)] = strings.TrimSpace(string(v))
	}
	return out
}

func normKey(k string) string {
	var b strings.Builder
	for _, r := range strings.ToLower(k) {
		if unicode.IsLetter(r) || unicode.IsDigit(r) || r == '#' {
			b.WriteRune(r)
		}
	}
	return b.String()
}

// bambooEvent maps a BambooHR record (normalized keys) and its changed fields to an HREvent.
func bambooEvent(where, id, action, eff string, changed []string, f map[string]string) (HREvent, error) {
	get := func(keys ...string) string {
		for _, k := range keys {
			if v := f[k]; v != "" {
				return v
			}
		}
		return ""
	}
	hire, err := bambooDate(where+".hireDate", get("hiredate"))
	if err != nil {
		return HREvent{}, err
	}
	term, err := bambooDate(where+".terminationDate", get("terminationdate"))
	if err != nil {
		return HREvent{}, err
	}
	empStatus := get("employmenthistorystatus", "employmentstatus")
	w := HRWorker{
		WorkerID:   id,
		WorkerType: bambooWorkerType(empStatus),
		GivenName:  get("preferredname", "firstname"),
		FamilyName: get("lastname"),
		Email:      get("workemail"),
		JobCode:    get("jobtitle"),
		Department: get("department"),
		ManagerID:  get("supervisoreid"),
		Location:   get("location"),
		StartDate:  hire,
	}
	ch := map[string]bool{}
	for _, c := range changed {
		ch[normKey(c)] = true
	}
	status := strings.ToLower(get("status"))
	inactive := status == "inactive" || strings.EqualFold(empStatus, "Terminated")
	ev := HREvent{Worker: w, EffectiveTime: eff}
	switch {
	case action == "Created":
		ev.Type = "hire"
		if hire != "" {
			ev.EffectiveTime = hire + "T00:00:00Z"
		}
		if inactive {
			return HREvent{}, Unprocessable(where+".status", "employee %s was created inactive; nothing to provision", clip(id))
		}
	case inactive:
		ev.Type = "termination"
		if term != "" {
			ev.Worker.EndDate = term
			ev.EffectiveTime = endOfDate(term)
		}
	case ch["status"] && status == "active":
		ev.Type = "rehire"
		if hire != "" {
			ev.EffectiveTime = hire + "T00:00:00Z"
		}
	case ch["employmenthistorystatus"] || ch["employmentstatus"]:
		ev.Type = "conversion"
	case ch["jobtitle"]:
		ev.Type = "job_change"
	case ch["department"] || ch["division"]:
		ev.Type = "department_change"
	case ch["supervisoreid"] || ch["reportingto"] || ch["supervisor"]:
		ev.Type = "manager_change"
	default:
		// Another attribute (name, email, location): a mover that carries the new record.
		ev.Type = "job_change"
	}
	if ev.Type == "hire" || ev.Type == "rehire" {
		if ev.Worker.WorkerType == "" {
			ev.Worker.WorkerType = "employee"
		}
	}
	return ev, nil
}

// bambooWorkerType maps BambooHR's employment status (a customer-editable list; these are
// its defaults) to a worker type; "" keeps the registry's.
func bambooWorkerType(s string) string {
	switch k := normKey(s); {
	case k == "":
		return ""
	case strings.Contains(k, "contract"):
		return "contractor"
	case strings.Contains(k, "intern"):
		return "intern"
	case strings.Contains(k, "temp") || strings.Contains(k, "seasonal"):
		return "temp"
	case strings.Contains(k, "volunteer"):
		return "volunteer"
	case strings.Contains(k, "student"):
		return "student"
	case strings.Contains(k, "vendor"):
		return "vendor"
	case k == "terminated":
		return ""
	default:
		return "employee"
	}
}

// bambooDate accepts YYYY-MM-DD; BambooHR writes an unset date as 0000-00-00.
func bambooDate(field, s string) (string, error) {
	if s == "" || s == "0000-00-00" {
		return "", nil
	}
	if _, err := time.Parse(time.DateOnly, s); err != nil {
		return "", Unprocessable(field, "%s %q is not a date YYYY-MM-DD", field, clip(s))
	}
	return s, nil
}

// bambooTime converts BambooHR's ISO 8601 timestamp ("2026-01-31T18:42:00+0000") to RFC 3339.
func bambooTime(field, s string) (string, error) {
	if s == "" {
		return "", nil
	}
	for _, layout := range []string{time.RFC3339Nano, "2006-01-02T15:04:05-0700", "2006-01-02 15:04:05"} {
		if t, err := time.Parse(layout, s); err == nil {
			return t.UTC().Format(time.RFC3339Nano), nil
		}
	}
	return "", Unprocessable(field, "%s %q is not an ISO 8601 time", field, clip(s))
}

// endOfDate is the first instant after a YYYY-MM-DD date in UTC: a last working day ends then.
func endOfDate(d string) string {
	t, err := time.Parse(time.DateOnly, d)
	if err != nil {
		return ""
	}
	return t.AddDate(0, 0, 1).Format(time.RFC3339)
}

// decodeLenientJSON decodes one JSON value, ignoring unknown fields but reporting wrong types
// and syntax errors with their path, like DecodeStrictJSON.
func decodeLenientJSON(body []byte, v any) error {
	if len(bytes.TrimSpace(body)) == 0 {
		return BadRequest("", "the body is empty; expected a JSON object")
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	if err := dec.Decode(v); err != nil {
		return jsonError(body, v, err)
	}
	if dec.More() {
		return BadRequest("", "the body holds more than one JSON value")
	}
	return nil
}

var stringType = reflect.TypeOf("")

// bambooFieldNames names the canonical fields by BambooHR's employee field names.
var bambooFieldNames = map[string]string{
	"worker.worker_id":   "id",
	"worker.worker_type": "employmentHistoryStatus",
	"worker.given_name":  "firstName",
	"worker.family_name": "lastName",
	"worker.email":       "workEmail",
	"worker.job_code":    "jobTitle",
	"worker.department":  "department",
	"worker.manager_id":  "supervisorEId",
	"worker.location":    "location",
	"worker.start_date":  "hireDate",
	"worker.end_date":    "terminationDate",
}

func (a *bambooHRAdapter) VendorField(canonical string) string { return bambooFieldNames[canonical] }

// FetchesRecords: event-based deliveries are thin (the record comes from the API).
func (a *bambooHRAdapter) FetchesRecords() {}
