package intake

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"crypto/sha512"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"net/http"
	"net/url"
	"strings"
	"time"
)

// HiBob (Bob) webhooks v2. Every event has the same envelope and carries only ids and the
// changed field paths:
//
//	{"companyId":638896,"type":"employee.updated","triggeredBy":"3332883884017713238",
//	 "triggeredAt":"2026-11-20T09:02:12.402283","version":"v2",
//	 "data":{"employeeId":"3332883884017713238","fieldsChanged":["/work/title"]}}
//
// so the adapter reads the employee from POST {api}/people/{id} (service user credentials,
// HTTP Basic) before anything is stored. Bob signs the raw body: Bob-Signature is the base64
// HMAC-SHA512 of the body keyed with the webhook's secret. The signature covers no
// timestamp, so replays are stopped by the delivery id (the body's SHA-256) that the receipts
// keep for ever. Bob's connection test ({"text":"Ping test"}) and events that are not about a
// worker's lifecycle answer 200 "ignored" so Bob does not retry them. Mapping:
// docs/hris-adapters.md.

// HeaderBobSignature is HiBob's signature header.
const HeaderBobSignature = "Bob-Signature"

// ErrIgnored is returned by an adapter for a delivery that is authentic but carries nothing
// for tenure (a vendor's connection test, an event about time off, ...): the webhook answers
// 200 {"status":"ignored"} and stores nothing.
var ErrIgnored = errors.New("intake: delivery ignored")

type hiBobAdapter struct {
	secrets [][]byte
	now     func() time.Time
	api     *hrisClient
}

var _ RequestVerifier = (*hiBobAdapter)(nil)

func newHiBobAdapter(_ string, sc SourceConfig) (Adapter, error) {
	if sc.API.User == "" && sc.API.BaseURL != "" {
		return nil, errors.New("api.user: HiBob needs the service user id (user or user_env)")
	}
	api, err := newHRISClient("HiBob", sc.API, func(a APIConfig) (string, string) { return a.User, a.Token })
	if err != nil {
		return nil, err
	}
	return &hiBobAdapter{secrets: rawSecrets(sc.Secrets), now: clockOf(sc), api: api}, nil
}

// SignHiBob returns the Bob-Signature of body (tests and tools).
func SignHiBob(key string, body []byte) string {
	return base64.StdEncoding.EncodeToString(hibobMAC([]byte(key), body))
}

func hibobMAC(key, body []byte) []byte {
	m := hmac.New(sha512.New, key)
	m.Write(body)
	return m.Sum(nil)
}

func (a *hiBobAdapter) VerifyRequest(h http.Header, body []byte) (string, time.Time, error) {
	sig := strings.TrimSpace(h.Get(HeaderBobSignature))
	if sig == "" {
		return "", time.Time{}, unauthorized(HeaderBobSignature, "missing HiBob header %s", HeaderBobSignature)
	}
	got, err := base64.StdEncoding.DecodeString(sig)
	if err != nil || !secretsMatch(a.secrets, got, func(k []byte) []byte { return hibobMAC(k, body) }) {
		return "", time.Time{}, unauthorized(HeaderBobSignature, "%s does not match a configured secret", HeaderBobSignature)
	}
	sum := sha256.Sum256(body)
	return "hibob-" + hex.EncodeToString(sum[:16]), a.now(), nil
}

type hibobPayload struct {
	Text        string     `json:"text"`
	CompanyID   flexString `json:"companyId"`
	Type        string     `json:"type"`
	TriggeredBy flexString `json:"triggeredBy"`
	TriggeredAt string     `json:"triggeredAt"`
	Version     string     `json:"version"`
	Data        *struct {
		EmployeeID    flexString        `json:"employeeId"`
		FieldsChanged []json.RawMessage `json:"fieldsChanged"`
	} `json:"data"`
}

// hibobPerson is the part of POST /v1/people/{id} the adapter reads (humanReadable=REPLACE,
// so list fields come back as their names).
type hibobPerson struct {
	ID        flexString `json:"id"`
	FirstName string     `json:"firstName"`
	Surname   string     `json:"surname"`
	Email     string     `json:"email"`
	Work      struct {
		Title      string `json:"title"`
		Department string `json:"department"`
		Site       string `json:"site"`
		StartDate  string `json:"startDate"`
		ReportsTo  *struct {
			ID flexString `json:"id"`
		} `json:"reportsTo"`
	} `json:"work"`
	Internal struct {
		Status          string `json:"status"`
		LifecycleStatus string `json:"lifecycleStatus"`
		TerminationDate string `json:"terminationDate"`
	} `json:"internal"`
	Payroll struct {
		Employment struct {
			Type            string `json:"type"`
			ContractEndDate string `json:"contractEndDate"`
		} `json:"employment"`
	} `json:"payroll"`
}

var hibobFields = []string{"root.id", "root.firstName", "root.surname", "root.email", "work.title", "work.department",
	"work.site", "work.startDate", "work.reportsTo", "internal.status", "internal.lifecycleStatus",
	"internal.terminationDate", "payroll.employment.type", "payroll.employment.contractEndDate"}

func (a *hiBobAdapter) Decode(ctx context.Context, d Delivery) (HREvent, error) {
	var p hibobPayload
	if err := decodeLenientJSON(d.Body, &p); err != nil {
		return HREvent{}, err
	}
	if p.Type == "" && strings.EqualFold(strings.TrimSpace(p.Text), "ping test") {
		return HREvent{}, ErrIgnored
	}
	if p.Type == "" {
		return HREvent{}, Unprocessable("type", "type is required")
	}
	if p.Version != "" && p.Version != "v2" {
		return HREvent{}, Unprocessable("version", "webhook version %q is not supported; subscribe with webhooks v2", clip(p.Version))
	}
	if !strings.HasPrefix(p.Type, "employee.") {
		return HREvent{}, ErrIgnored // time off, tasks, documents, tables
	}
	if p.Data == nil || strings.TrimSpace(string(p.Data.EmployeeID)) == "" {
		return HREvent{}, Unprocessable("data.employeeId", "data.employeeId is required")
	}
	id := strings.TrimSpace(string(p.Data.EmployeeID))
	if err := checkID("data.employeeId", id); err != nil {
		return HREvent{}, err
	}
	eff := ""
	if p.TriggeredAt != "" {
		t, err := parseHiBobTime(p.TriggeredAt)
		if err != nil {
			return HREvent{}, Unprocessable("triggeredAt", "triggeredAt %q is not an ISO 8601 time", clip(p.TriggeredAt))
		}
		eff = t.Format(time.RFC3339Nano)
	}
	changed := map[string]bool{}
	for _, raw := range p.Data.FieldsChanged {
		// Each entry is a field path, or an object naming it.
		var s string
		if json.Unmarshal(raw, &s) != nil {
			var o struct {
				FieldID string `json:"fieldId"`
				ID      string `json:"id"`
			}
			if json.Unmarshal(raw, &o) != nil {
				return HREvent{}, Unprocessable("data.fieldsChanged", "data.fieldsChanged entries must be field paths")
			}
			s = o.FieldID + o.ID
		}
		changed[strings.Trim(strings.ReplaceAll(s, ".", "/"), "/")] = true
	}
	var typ string
	switch p.Type {
	case "employee.deleted":
		return HREvent{Type: "termination", Worker: HRWorker{WorkerID: id}, EffectiveTime: eff, Reason: "deleted in HiBob"}, nil
	case "employee.created", "employee.joined":
		typ = "hire"
	case "employee.left":
		typ = "termination"
	case "employee.temporaryLeave":
		typ = "leave_start"
	case "employee.inactivated":
		typ = "" // decided by the record: on leave or terminated
	case "employee.activated":
		typ = "leave_end"
	case "employee.updated":
		switch {
		case changed["payroll/employment/type"]:
			typ = "conversion"
		case changed["work/title"]:
			typ = "job_change"
		case changed["work/department"]:
			typ = "department_change"
		case changed["work/reportsTo"]:
			typ = "manager_change"
		default:
			typ = "job_change"
		}
	default:
		return HREvent{}, ErrIgnored
	}
	body, _ := json.Marshal(map[string]any{"fields": hibobFields, "humanReadable": "REPLACE"})
	var rec hibobPerson
	if err := a.api.do(ctx, http.MethodPost, "/people/"+url.PathEscape(id), body, &rec); err != nil {
		return HREvent{}, fetchedFor(err, id)
	}
	start, err := hibobDate("work.startDate", rec.Work.StartDate)
	if err != nil {
		return HREvent{}, err
	}
	term, err := hibobDate("internal.terminationDate", rec.Internal.TerminationDate)
	if err != nil {
		return HREvent{}, err
	}
	contractEnd, err := hibobDate("payroll.employment.contractEndDate", rec.Payroll.Employment.ContractEndDate)
	if err != nil {
		return HREvent{}, err
	}
	w := HRWorker{
		WorkerID:   id,
		WorkerType: hibobWorkerType(rec.Payroll.Employment.Type),
		GivenName:  rec.FirstName,
		FamilyName: rec.Surname,
		Email:      rec.Email,
		JobCode:    rec.Work.Title,
		Department: rec.Work.Department,
		Location:   rec.Work.Site,
		StartDate:  start,
		EndDate:    contractEnd,
	}
	if rec.Work.ReportsTo != nil {
		w.ManagerID = string(rec.Work.ReportsTo.ID)
	}
	if typ == "" {
		if strings.Contains(strings.ToLower(rec.Internal.LifecycleStatus), "leave") {
			typ = "leave_start"
		} else {
			typ = "termination"
		}
	}
	ev := HREvent{Type: typ, Worker: w, EffectiveTime: eff}
	switch typ {
	case "hire":
		if w.WorkerType == "" {
			ev.Worker.WorkerType = "employee"
		}
		if start != "" && p.Type == "employee.created" {
			ev.EffectiveTime = start + "T00:00:00Z"
		}
	case "termination":
		if term != "" {
			ev.Worker.EndDate = term
			ev.EffectiveTime = endOfDate(term)
		}
	}
	return ev, nil
}

func hibobWorkerType(s string) string {
	k := normKey(s)
	switch {
	case k == "":
		return ""
	case strings.Contains(k, "contract"):
		return "contractor"
	case strings.Contains(k, "intern"):
		return "intern"
	case strings.Contains(k, "temp"):
		return "temp"
	case strings.Contains(k, "volunteer"):
		return "volunteer"
	case strings.Contains(k, "student"):
		return "student"
	case strings.Contains(k, "vendor") || strings.Contains(k, "agency"):
		return "vendor"
	default:
		return "employee"
	}
}

// hibobDate accepts YYYY-MM-DD or DD/MM/YYYY (Bob's human-readable form).
func hibobDate(field, s string) (string, error) {
	if s == "" {
		return "", nil
	}
	if _, err := time.Parse(time.DateOnly, s); err == nil {
		return s, nil
	}
	if t, err := time.Parse("02/01/2006", s); err == nil {
		return t.Format(time.DateOnly), nil
	}
	return "", Unprocessable(field, "the HiBob record's %s %q is not a date", field, clip(s))
}

func parseHiBobTime(s string) (time.Time, error) {
	for _, layout := range []string{time.RFC3339Nano, "2006-01-02T15:04:05.999999999"} {
		if t, err := time.Parse(layout, s); err == nil {
			return t.UTC(), nil
		}
	}
	return time.Time{}, errors.New("bad time")
}

// hibobFieldIDs names the canonical fields by the HiBob field ids of the employee record the
// adapter fetched.
var hibobFieldIDs = map[string]string{
	"worker.worker_id":   "root.id",
	"worker.worker_type": "payroll.employment.type",
	"worker.given_name":  "root.firstName",
	"worker.family_name": "root.surname",
	"worker.email":       "root.email",
	"worker.job_code":    "work.title",
	"worker.department":  "work.department",
	"worker.manager_id":  "work.reportsTo",
	"worker.location":    "work.site",
	"worker.start_date":  "work.startDate",
	"worker.end_date":    "payroll.employment.contractEndDate",
}

func (a *hiBobAdapter) VendorField(canonical string) string { return hibobFieldIDs[canonical] }

// FetchesRecords: HiBob's webhooks are thin (the record comes from the API).
func (a *hiBobAdapter) FetchesRecords() {}
