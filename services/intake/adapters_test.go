package intake

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tenure-dev/tenure/pkg/events"
	"github.com/tenure-dev/tenure/pkg/webhook"
	eventsv1 "github.com/tenure-dev/tenure/proto/tenure/events/v1"
	intakev1 "github.com/tenure-dev/tenure/proto/tenure/intake/v1"
)

// Vendor keys of the test sources (taken as is, like BambooHR's private key and Bob's secret).
const (
	bambooKey = "bamboo-private-key-0123456789abcdef"
	bobSecret = "bob-webhook-secret-0123456789abcdef"
	bambooAPI = "bamboo-api-key-1"
	bobUser   = "SERVICE-4711"
	bobToken  = "bob-service-token"
)

var workdaySecret = webhook.NewSecret()

func readTestdata(t testing.TB, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("testdata", name))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// fakeHRIS answers BambooHR's GET /employees/{id} and HiBob's POST /people/{id} in the
// vendors' documented shapes, from testdata, checking their credentials.
type fakeHRIS struct {
	srv      *httptest.Server
	mu       sync.Mutex
	records  map[string][]byte // by path
	failures atomic.Int32      // answer 503 this many more times
	calls    atomic.Int32
}

func newFakeHRIS(t testing.TB) *fakeHRIS {
	f := &fakeHRIS{records: map[string][]byte{
		"/bamboo/employees/67890":         readTestdata(t, "bamboohr/api_employee_67890.json"),
		"/bamboo/employees/67891":         readTestdata(t, "bamboohr/api_employee_67891.json"),
		"/bob/people/3332883884017713238": readTestdata(t, "hibob/api_person.json"),
	}}
	f.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		f.calls.Add(1)
		user, pass, _ := r.BasicAuth()
		switch {
		case strings.HasPrefix(r.URL.Path, "/bamboo/"):
			if r.Method != http.MethodGet || user != bambooAPI || pass != "x" || !strings.Contains(r.URL.Query().Get("fields"), "jobTitle") {
				http.Error(w, "unauthorized", http.StatusUnauthorized)
				return
			}
		case strings.HasPrefix(r.URL.Path, "/bob/"):
			var req struct {
				Fields        []string `json:"fields"`
				HumanReadable string   `json:"humanReadable"`
			}
			if r.Method != http.MethodPost || user != bobUser || pass != bobToken || json.NewDecoder(r.Body).Decode(&req) != nil || len(req.Fields) == 0 {
				http.Error(w, "unauthorized", http.StatusUnauthorized)
				return
			}
		}
		if f.failures.Load() > 0 {
			f.failures.Add(-1)
			http.Error(w, "upstream unavailable", http.StatusServiceUnavailable)
			return
		}
		f.mu.Lock()
		b, ok := f.records[r.URL.Path]
		f.mu.Unlock()
		if !ok {
			http.NotFound(w, r)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		w.Write(b)
	}))
	t.Cleanup(f.srv.Close)
	return f
}

func (f *fakeHRIS) set(path string, b []byte) {
	f.mu.Lock()
	f.records[path] = b
	f.mu.Unlock()
}

func vendorHarness(t testing.TB) (*harness, *fakeHRIS) {
	hris := newFakeHRIS(t)
	h := newHarness(t, func(c *Config) {
		c.Sources["bamboo"] = SourceConfig{Secrets: []string{bambooKey}, Format: FormatBambooHR,
			API: APIConfig{BaseURL: hris.srv.URL + "/bamboo", Token: bambooAPI, Timeout: 2 * time.Second, Retries: 2}}
		c.Sources["bob"] = SourceConfig{Secrets: []string{bobSecret}, Format: FormatHiBob,
			API: APIConfig{BaseURL: hris.srv.URL + "/bob", User: bobUser, Token: bobToken, Timeout: 2 * time.Second, Retries: 1}}
		c.Sources["workday"] = SourceConfig{Secrets: []string{workdaySecret}, Format: FormatWorkday}
	})
	for _, s := range h.svc.sources {
		if c, ok := s.adapter.(*bambooHRAdapter); ok {
			c.api.backoff = func(int) time.Duration { return 10 * time.Millisecond }
		}
		if c, ok := s.adapter.(*hiBobAdapter); ok {
			c.api.backoff = func(int) time.Duration { return 10 * time.Millisecond }
		}
	}
	return h, hris
}

func bambooDelivery(body []byte, ts time.Time) delivery {
	tss := strconv.FormatInt(ts.Unix(), 10)
	h := http.Header{}
	h.Set(HeaderBambooHRTimestamp, tss)
	h.Set(HeaderBambooHRSignature, SignBambooHR(bambooKey, body, tss))
	return delivery{source: "bamboo", body: string(body), header: h}
}

func bobDelivery(body []byte) delivery {
	h := http.Header{}
	h.Set(HeaderBobSignature, SignHiBob(bobSecret, body))
	return delivery{source: "bob", body: string(body), header: h}
}

func TestBambooHREventBased(t *testing.T) {
	h, hris := vendorHarness(t)
	seedWorkers(t, h, "67890")
	body := readTestdata(t, "bamboohr/event_updated.json")

	// The API fails more often than the adapter retries: 503, nothing stored, the HRIS retries.
	hris.failures.Store(3)
	if a := h.post(bambooDelivery(body, time.Now())); a.Status != http.StatusServiceUnavailable {
		t.Fatalf("API down: %d %s", a.Status, a.Raw)
	}
	if n := hris.calls.Load(); n != 3 {
		t.Fatalf("%d API calls, want 1 + 2 retries", n)
	}
	if h.count("receipts") != 0 || h.count("worker_history") != 0 || h.streamMsgs(">") != 0 {
		t.Fatal("a failed fetch stored something")
	}
	// One failure is absorbed by the retries.
	hris.failures.Store(1)
	a := h.post(bambooDelivery(body, time.Now()))
	if a.Status != http.StatusAccepted || a.Subject != "tenure.hr.mover.67890" || !strings.HasPrefix(a.EventID, "intake:bamboo:bamboohr-") {
		t.Fatalf("updated: %d %s", a.Status, a.Raw)
	}
	_, ev := h.lastMsg("tenure.hr.mover.67890")
	w := ev.GetWorker()
	if ev.GetHrEventType() != "job_change" || w.GetJobCode() != "Charge Nurse" || w.GetEmail() != "grace.hopper@clinic.example" ||
		w.GetManagerId() != "67001" || w.GetStartDate() != "2024-06-03" || w.GetEndDate() != "" || w.GetWorkerType() != eventsv1.WorkerType_WORKER_TYPE_EMPLOYEE ||
		!ev.GetEffectiveTime().AsTime().Equal(time.Date(2026, 1, 31, 18, 42, 0, 0, time.UTC)) {
		t.Fatalf("mapped %v", ev)
	}
	// BambooHR retries the same body with a new timestamp: a duplicate.
	if a := h.post(bambooDelivery(body, time.Now().Add(time.Second))); a.Status != http.StatusOK || a.State != "duplicate" {
		t.Fatalf("retry: %d %s", a.Status, a.Raw)
	}
	// A created contractor: a hire effective at the hire date.
	a = h.post(bambooDelivery(readTestdata(t, "bamboohr/event_created.json"), time.Now()))
	_, ev = h.lastMsg("tenure.hr.joiner.67891")
	if a.Status != http.StatusAccepted || ev.GetWorker().GetWorkerType() != eventsv1.WorkerType_WORKER_TYPE_CONTRACTOR || ev.GetHrEventType() != "hire" ||
		ev.GetEffectiveTime().AsTime().Format(time.DateOnly) != "2026-01-05" {
		t.Fatalf("created: %d %s %v", a.Status, a.Raw, ev)
	}
	// Deleted: no fetch, a termination filled from the registry.
	calls := hris.calls.Load()
	del := strings.Replace(string(readTestdata(t, "bamboohr/event_deleted.json")), "67892", "67890", 1)
	if a := h.post(bambooDelivery([]byte(del), time.Now())); a.Status != http.StatusAccepted || a.Subject != "tenure.hr.leaver.67890" {
		t.Fatalf("deleted: %d %s", a.Status, a.Raw)
	}
	_, ev = h.lastMsg("tenure.hr.leaver.67890")
	if hris.calls.Load() != calls || ev.GetWorker().GetEmail() != "grace.hopper@clinic.example" || ev.GetWorker().GetStatus() != eventsv1.WorkerStatus_WORKER_STATUS_TERMINATED {
		t.Fatalf("deleted: %v", ev)
	}

	// Signature checks, each a 401 naming the header; nothing stored.
	before := h.count("receipts")
	good := bambooDelivery(body, time.Now())
	tests := []struct {
		name  string
		mod   func(d *delivery)
		field string
	}{
		{"bad signature", func(d *delivery) {
			d.header.Set(HeaderBambooHRSignature, SignBambooHR("another-key-0123456789", body, d.header.Get(HeaderBambooHRTimestamp)))
		}, HeaderBambooHRSignature},
		{"body changed", func(d *delivery) { d.body = strings.Replace(d.body, "67890", "67899", 1) }, HeaderBambooHRSignature},
		{"no signature", func(d *delivery) { d.header.Del(HeaderBambooHRSignature) }, HeaderBambooHRSignature},
		{"no timestamp", func(d *delivery) { d.header.Del(HeaderBambooHRTimestamp) }, HeaderBambooHRTimestamp},
		{"stale timestamp", func(d *delivery) { *d = bambooDelivery(body, time.Now().Add(-time.Hour)) }, HeaderBambooHRTimestamp},
		{"Standard Webhooks instead", func(d *delivery) { d.header = nil; d.secret = acmeSecret; d.id = "x" }, HeaderBambooHRTimestamp},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := good
			d.header = good.header.Clone()
			tt.mod(&d)
			a := h.post(d)
			if a.Status != http.StatusUnauthorized || a.Field != tt.field {
				t.Fatalf("got %d %s; want 401 naming %s", a.Status, a.Raw, tt.field)
			}
		})
	}
	if h.count("receipts") != before {
		t.Fatal("a rejected delivery stored a receipt")
	}
}

func TestBambooHRFieldBased(t *testing.T) {
	h, hris := vendorHarness(t)
	seedWorkers(t, h, "9", "10")
	a := h.post(bambooDelivery(readTestdata(t, "bamboohr/field_based.json"), time.Now()))
	var got struct {
		Status string         `json:"status"`
		Events []acceptedBody `json:"events"`
	}
	json.Unmarshal([]byte(a.Raw), &got)
	if a.Status != http.StatusAccepted || len(got.Events) != 2 || got.Events[0].Subject != "tenure.hr.mover.9" || got.Events[1].Subject != "tenure.hr.leaver.10" {
		t.Fatalf("field-based: %d %s", a.Status, a.Raw)
	}
	if hris.calls.Load() != 0 {
		t.Fatal("field-based payloads carry the record: no fetch")
	}
	_, ev := h.lastMsg("tenure.hr.mover.9")
	if ev.GetHrEventType() != "department_change" || ev.GetWorker().GetDepartment() != "Pathology" || ev.GetWorker().GetGivenName() != "Robert" {
		t.Fatalf("mover %v", ev)
	}
	_, ev = h.lastMsg("tenure.hr.leaver.10")
	if ev.GetWorker().GetEndDate() != "2026-04-09" || !ev.GetEffectiveTime().AsTime().Equal(time.Date(2026, 4, 10, 0, 0, 0, 0, time.UTC)) {
		t.Fatalf("leaver %v", ev)
	}
	if a := h.post(bambooDelivery(readTestdata(t, "bamboohr/field_based.json"), time.Now().Add(time.Second))); a.Status != http.StatusOK || a.State != "duplicate" {
		t.Fatalf("retry: %d %s", a.Status, a.Raw)
	}
	// A bad employee anywhere rejects the whole delivery.
	bad := `{"employees":[{"id":"11","action":"Updated","fields":{"Work Email":"x@y.org"}},{"id":"12","action":"Updated","fields":{"Hire Date":"01/02/2026"}}]}`
	if a := h.post(bambooDelivery([]byte(bad), time.Now())); a.Status != http.StatusUnprocessableEntity || a.Field != "employees[1].hireDate" {
		t.Fatalf("bad employee: %d %s", a.Status, a.Raw)
	}
	if h.count("receipts") != 2 {
		t.Fatalf("receipts %d", h.count("receipts"))
	}
}

func TestHiBob(t *testing.T) {
	h, hris := vendorHarness(t)
	seedWorkers(t, h, "3332883884017713238")
	for _, f := range []string{"hibob/ping.json", "hibob/timeoff.json"} {
		if a := h.post(bobDelivery(readTestdata(t, f))); a.Status != http.StatusOK || a.State != "ignored" {
			t.Fatalf("%s: %d %s", f, a.Status, a.Raw)
		}
	}
	body := readTestdata(t, "hibob/employee_updated.json")
	a := h.post(bobDelivery(body))
	if a.Status != http.StatusAccepted || a.Subject != "tenure.hr.mover.3332883884017713238" {
		t.Fatalf("updated: %d %s", a.Status, a.Raw)
	}
	_, ev := h.lastMsg(a.Subject)
	w := ev.GetWorker()
	if ev.GetHrEventType() != "department_change" || w.GetDepartment() != "Pulmonology" || w.GetManagerId() != "3332883804594373380" ||
		w.GetJobCode() != "Respiratory Therapist" || w.GetLocation() != "Cambridge" || w.GetWorkerType() != eventsv1.WorkerType_WORKER_TYPE_EMPLOYEE {
		t.Fatalf("mapped %v", ev)
	}
	if a := h.post(bobDelivery(body)); a.Status != http.StatusOK || a.State != "duplicate" {
		t.Fatalf("retry: %d %s", a.Status, a.Raw)
	}
	// employee.left: the record now has a termination date in the future, so the leaver is
	// held until the day after it.
	term := time.Now().UTC().AddDate(0, 0, 3).Format(time.DateOnly)
	person := strings.Replace(string(readTestdata(t, "hibob/api_person.json")), `"terminationDate": null`, `"terminationDate": "`+term+`"`, 1)
	hris.set("/bob/people/3332883884017713238", []byte(person))
	a = h.post(bobDelivery(readTestdata(t, "hibob/employee_left.json")))
	if a.Status != http.StatusAccepted || a.State != "scheduled" || !strings.HasPrefix(a.Raw, `{"status":"scheduled"`) {
		t.Fatalf("left: %d %s", a.Status, a.Raw)
	}
	if h.streamMsgs("tenure.hr.leaver.>") != 0 {
		t.Fatal("a future termination was published at once")
	}
	// Bad signatures.
	for name, d := range map[string]delivery{
		"wrong secret": {source: "bob", body: string(body), header: http.Header{"Bob-Signature": {SignHiBob("not-the-secret-0123456789", body)}}},
		"missing":      {source: "bob", body: string(body)},
		"not base64":   {source: "bob", body: string(body), header: http.Header{"Bob-Signature": {"%%%"}}},
	} {
		if a := h.post(d); a.Status != http.StatusUnauthorized || a.Field != HeaderBobSignature {
			t.Errorf("%s: %d %s", name, a.Status, a.Raw)
		}
	}
	// The API no longer knows the employee: 200 so HiBob stops retrying (a retry cannot make
	// the employee exist), nothing stored, and a finding for the operator.
	hris.set("/bob/people/3332883884017713238", nil)
	hris.mu.Lock()
	delete(hris.records, "/bob/people/3332883884017713238")
	hris.mu.Unlock()
	receipts := h.count("receipts")
	other := strings.Replace(string(body), "/work/department", "/work/title", 1)
	if a := h.post(bobDelivery([]byte(other))); a.Status != http.StatusOK || a.State != "ignored" || !strings.Contains(a.Reason, "HTTP 404") {
		t.Fatalf("record not found: %d %s", a.Status, a.Raw)
	}
	if h.count("receipts") != receipts {
		t.Fatal("a delivery whose record is gone stored a receipt")
	}
	fs, err := h.svc.ListFindings(context.Background(), &intakev1.ListFindingsRequest{Kind: findingHRISNotFound})
	if err != nil || len(fs.Findings) != 1 || fs.Findings[0].WorkerId != "3332883884017713238" || fs.Findings[0].Source != "bob" {
		t.Fatalf("finding %v %v", fs, err)
	}
}

func TestWorkday(t *testing.T) {
	h, _ := vendorHarness(t)
	a := h.post(delivery{source: "workday", id: "wd-1", secret: workdaySecret, body: string(readTestdata(t, "workday/hire_contractor.json"))})
	if a.Status != http.StatusAccepted || a.Subject != "tenure.hr.joiner.C-3001" {
		t.Fatalf("hire: %d %s", a.Status, a.Raw)
	}
	_, ev := h.lastMsg(a.Subject)
	w := ev.GetWorker()
	if w.GetWorkerType() != eventsv1.WorkerType_WORKER_TYPE_CONTRACTOR || w.GetSponsorId() != "21000" || w.GetVendorOrg() != "Acme Staffing" ||
		w.GetEndDate() != "2026-06-30" || w.GetJobCode() != "IT-CONS" || w.GetDepartment() != "IT" {
		t.Fatalf("contractor %v", w)
	}
	seedWorkers(t, h, "21001")
	a = h.post(delivery{source: "workday", id: "wd-2", secret: workdaySecret, body: string(readTestdata(t, "workday/terminate.json"))})
	m, ev := h.lastMsg("tenure.hr.leaver.21001")
	if a.Status != http.StatusAccepted || m.Header.Get(events.HeaderMsgID) != "intake:workday:wd-2" ||
		!ev.GetEffectiveTime().AsTime().Equal(time.Date(2026, 4, 1, 0, 0, 0, 0, time.UTC)) || ev.GetWorker().GetEndDate() != "2026-03-31" {
		t.Fatalf("terminate: %d %s %v", a.Status, a.Raw, ev)
	}
	bad := []struct{ name, body, field string }{
		{"unknown process", `{"Worker_Event":{"Business_Process_Type":"Promote Worker","Worker":{"Worker_ID":"1"}}}`, "Worker_Event.Business_Process_Type"},
		{"unknown field", `{"Worker_Event":{"Business_Process_Type":"Hire","Worker":{"Worker_ID":"1","Shoe_Size":"44"}}}`, "Worker_Event.Worker.Shoe_Size"},
		{"unknown contingent type", `{"Worker_Event":{"Business_Process_Type":"Hire","Worker":{"Worker_ID":"1","Worker_Type":"Contingent_Worker","Contingent_Worker_Type":"Robot"}}}`, "Worker_Event.Worker.Contingent_Worker_Type"},
		{"no worker", `{"Worker_Event":{"Business_Process_Type":"Hire"}}`, "Worker_Event.Worker"},
		{"self manager", `{"Worker_Event":{"Business_Process_Type":"Change Job","Worker":{"Worker_ID":"7","Position":{"Manager_Worker_ID":"7"}}}}`, "Worker_Event.Worker.Position.Manager_Worker_ID"},
	}
	for i, b := range bad {
		a := h.post(delivery{source: "workday", id: "bad-" + strconv.Itoa(i), secret: workdaySecret, body: b.body})
		if a.Status/100 != 4 || a.Field != b.field {
			t.Errorf("%s: %d %s; want field %s", b.name, a.Status, a.Raw, b.field)
		}
	}
	// The vendor's field is named first, tenure's canonical path after it.
	a = h.post(delivery{source: "workday", id: "bad-email", secret: workdaySecret,
		body: `{"Worker_Event":{"Business_Process_Type":"Change Job","Worker":{"Worker_ID":"7","Email_Address":"not an email"}}}`})
	if a.Status != 422 || a.Field != "Worker_Event.Worker.Email_Address" || !strings.HasPrefix(a.Error, "Worker_Event.Worker.Email_Address") ||
		!strings.Contains(a.Error, "(tenure's worker.email)") {
		t.Errorf("bad email: %d %s", a.Status, a.Raw)
	}
}

func TestVendorConfig(t *testing.T) {
	t.Setenv("INTAKE_TEST_BAMBOO_KEY", bambooKey)
	t.Setenv("INTAKE_TEST_BAMBOO_API", bambooAPI)
	c, err := ParseConfig([]byte(`settings:
  rescind_grace: 48h
  schedule_interval: 2s
  timezone: America/Chicago
sources:
  bamboo:
    format: bamboohr
    secrets_env: [INTAKE_TEST_BAMBOO_KEY]
    api:
      base_url: https://api.bamboohr.com/api/gateway.php/acme/v1
      token_env: INTAKE_TEST_BAMBOO_API
      timeout: 3s
      retries: 4
`))
	if err != nil {
		t.Fatal(err)
	}
	b := c.Sources["bamboo"]
	if c.RescindGrace != 48*time.Hour || c.ScheduleInterval != 2*time.Second || c.Location.String() != "America/Chicago" ||
		b.API.Token != bambooAPI || b.API.Timeout != 3*time.Second || b.API.Retries != 4 || b.Secrets[0] != bambooKey {
		t.Fatalf("config %+v %v", c, b)
	}
	if s := b.String() + c.Sources["bamboo"].API.String(); strings.Contains(s, bambooAPI) || strings.Contains(s, bambooKey) {
		t.Fatalf("secret printed: %s", s)
	}
	bad := []struct{ name, body, want string }{
		{"thin format without api", "sources:\n  b:\n    format: bamboohr\n    secrets_env: [INTAKE_TEST_BAMBOO_KEY]\n", "sources.b: api.base_url"},
		{"token inline", "sources:\n  b:\n    format: bamboohr\n    secrets_env: [INTAKE_TEST_BAMBOO_KEY]\n    api: {base_url: https://x.example, token: abc}\n", "field token not found"},
		{"unset token env", "sources:\n  b:\n    format: bamboohr\n    secrets_env: [INTAKE_TEST_BAMBOO_KEY]\n    api: {base_url: https://x.example, token_env: INTAKE_TEST_UNSET}\n", "sources.b.api.token_env: environment variable INTAKE_TEST_UNSET"},
		{"bad url", "sources:\n  b:\n    format: bamboohr\n    secrets_env: [INTAKE_TEST_BAMBOO_KEY]\n    api: {base_url: 'ftp://x', token_env: INTAKE_TEST_BAMBOO_API}\n", "sources.b.api.base_url"},
		{"bad retries", "sources:\n  b:\n    format: bamboohr\n    secrets_env: [INTAKE_TEST_BAMBOO_KEY]\n    api: {base_url: 'https://x', token_env: INTAKE_TEST_BAMBOO_API, retries: 99}\n", "sources.b.api.retries"},
		{"short vendor key", "sources:\n  b:\n    format: hibob\n    secrets: [short]\n", "sources.b.secrets[0]: secret is too short"},
		{"hibob without user", "sources:\n  b:\n    format: hibob\n    secrets_env: [INTAKE_TEST_BAMBOO_KEY]\n    api: {base_url: 'https://x', token_env: INTAKE_TEST_BAMBOO_API}\n", "api.user"},
		{"bad grace", "settings: {rescind_grace: soon}\nsources:\n  a:\n    secrets: [" + strconv.Quote(acmeSecret) + "]\n", "settings.rescind_grace"},
		{"bad timezone", "settings: {timezone: Mars/Olympus}\nsources:\n  a:\n    secrets: [" + strconv.Quote(acmeSecret) + "]\n", "settings.timezone"},
		{"unknown setting", "settings: {grace: 1h}\nsources:\n  a:\n    secrets: [" + strconv.Quote(acmeSecret) + "]\n", "field grace not found"},
	}
	for _, tt := range bad {
		if _, err := ParseConfig([]byte(tt.body)); err == nil || !strings.Contains(err.Error(), tt.want) || strings.Contains(err.Error(), bambooAPI) {
			t.Errorf("%s: %v; want %q", tt.name, err, tt.want)
		}
	}
	_ = context.Background
}

// BambooHR's "Form Post" encoding of both structures maps like the JSON; a malformed form is a
// 400 naming the key, and other sources still refuse form bodies.
func TestBambooHRFormPost(t *testing.T) {
	h, _ := vendorHarness(t)
	seedWorkers(t, h, "67890", "9", "10")
	form := func(body []byte) delivery {
		d := bambooDelivery(body, time.Now())
		d.contentType = "application/x-www-form-urlencoded"
		return d
	}
	a := h.post(form(readTestdata(t, "bamboohr/event_updated.form")))
	if a.Status != http.StatusAccepted || a.Subject != "tenure.hr.mover.67890" {
		t.Fatalf("event-based form: %d %s", a.Status, a.Raw)
	}
	_, ev := h.lastMsg("tenure.hr.mover.67890")
	if ev.GetHrEventType() != "job_change" || ev.GetWorker().GetJobCode() != "Charge Nurse" {
		t.Fatalf("event-based form mapped %v", ev)
	}
	a = h.post(form(readTestdata(t, "bamboohr/field_based.form")))
	if a.Status != http.StatusAccepted || !strings.Contains(a.Raw, "tenure.hr.leaver.10") {
		t.Fatalf("field-based form: %d %s", a.Status, a.Raw)
	}
	_, ev = h.lastMsg("tenure.hr.mover.9")
	if ev.GetWorker().GetDepartment() != "Pathology" || ev.GetWorker().GetGivenName() != "Robert" {
		t.Fatalf("field-based form mapped %v", ev)
	}
	before := h.count("receipts")
	for _, tt := range []struct{ body, field string }{
		{"type=employee.updated&data[employeeId]=1&data[employeeId]=2", "data[employeeId]"},
		{"type=employee.updated&data[employeeId=1", "data[employeeId"},
		{"type=employee.updated&data=1&data[employeeId]=1", "data[employeeId]"},
		{"type=employee.updated&data[employeeId]=%zz", "body"},
	} {
		if a := h.post(form([]byte(tt.body))); a.Status != http.StatusBadRequest || a.Field != tt.field {
			t.Errorf("%q: %d %s; want 400 naming %s", tt.body, a.Status, a.Raw, tt.field)
		}
	}
	if h.count("receipts") != before {
		t.Fatal("a malformed form stored a receipt")
	}
	d := delivery{id: "form_1", body: "type=hire", secret: acmeSecret, contentType: "application/x-www-form-urlencoded"}
	if a := h.post(d); a.Status != http.StatusUnsupportedMediaType || a.Field != "Content-Type" {
		t.Fatalf("form to a canonical source: %d %s", a.Status, a.Raw)
	}
}

func TestFormToJSON(t *testing.T) {
	got, err := formToJSON([]byte("a[0]=x&a[1]=y&b[c][d]=1&b[10]=z&e=%C3%A9"))
	if err != nil {
		t.Fatal(err)
	}
	if want := `{"a":["x","y"],"b":{"10":"z","c":{"d":"1"}},"e":"é"}`; string(got) != want {
		t.Fatalf("got %s, want %s", got, want)
	}
	if _, err := formToJSON([]byte("a" + strings.Repeat("[x]", 9) + "=1")); err == nil {
		t.Fatal("nesting deeper than the limit accepted")
	}
}
