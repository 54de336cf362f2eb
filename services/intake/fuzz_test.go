package intake

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/tenure-dev/tenure/pkg/webhook"
	intakev1 "github.com/tenure-dev/tenure/proto/tenure/intake/v1"
)

// Fuzz targets: the signature verifiers and every adapter. Seeds are the testdata samples;
// CI runs each briefly (go test -run '^$' -fuzz FuzzX -fuzztime 10s).

// inputErrorOnly fails unless err is nil, ErrIgnored or an InputError with a 4xx status.
func inputErrorOnly(t *testing.T, err error) {
	t.Helper()
	if err == nil || errors.Is(err, ErrIgnored) {
		return
	}
	var ie *InputError
	if !errors.As(err, &ie) || ie.Status < 400 || ie.Status > 499 {
		t.Fatalf("not a 4xx InputError: %T %v", err, err)
	}
}

func FuzzStandardWebhooksVerify(f *testing.F) {
	secret := "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
	key, _ := webhook.ParseSecret(secret)
	now := time.Unix(1_800_000_000, 0)
	v := &webhook.Verifier{Keys: [][]byte{key}, Now: func() time.Time { return now }}
	f.Add("msg_1", strconv.FormatInt(now.Unix(), 10), webhook.Sign(key, "msg_1", now, []byte(hireBody)), []byte(hireBody))
	f.Add("msg_2", "yesterday", "v1,!!", []byte(`{}`))
	f.Add("", "", "", []byte(nil))
	f.Add("m", "1800000000", "v2,abc v1,", []byte("x"))
	f.Fuzz(func(t *testing.T, id, ts, sig string, body []byte) {
		if _, err := v.Verify(id, ts, sig, body); err == nil {
			// Whatever passed must carry the real signature.
			secs, _ := strconv.ParseInt(ts, 10, 64)
			if !strings.Contains(sig, webhook.Sign(key, id, time.Unix(secs, 0), body)[3:]) {
				t.Fatalf("accepted a signature that is not ours: %q", sig)
			}
		}
		if id != "" {
			if _, err := v.Verify(id, strconv.FormatInt(now.Unix(), 10), webhook.Sign(key, id, now, body), body); err != nil {
				t.Fatalf("our own signature rejected: %v", err)
			}
		}
	})
}

func FuzzBambooHRVerify(f *testing.F) {
	now := time.Unix(1_800_000_000, 0)
	a := &bambooHRAdapter{secrets: rawSecrets([]string{bambooKey}), tolerance: 5 * time.Minute, now: func() time.Time { return now }}
	body := readTestdata(f, "bamboohr/event_updated.json")
	ts := strconv.FormatInt(now.Unix(), 10)
	f.Add(body, ts, SignBambooHR(bambooKey, body, ts))
	f.Add([]byte("{}"), "0", "zz")
	f.Add([]byte(nil), "", "")
	f.Fuzz(func(t *testing.T, body []byte, ts, sig string) {
		h := http.Header{}
		h.Set(HeaderBambooHRTimestamp, ts)
		h.Set(HeaderBambooHRSignature, sig)
		id, _, err := a.VerifyRequest(h, body)
		inputErrorOnly(t, err)
		if err == nil && (!strings.EqualFold(strings.TrimSpace(sig), SignBambooHR(bambooKey, body, ts)) || !strings.HasPrefix(id, "bamboohr-")) {
			t.Fatalf("accepted a signature that is not ours: %q", sig)
		}
		good := http.Header{}
		nts := strconv.FormatInt(now.Unix(), 10)
		good.Set(HeaderBambooHRTimestamp, nts)
		good.Set(HeaderBambooHRSignature, SignBambooHR(bambooKey, body, nts))
		if _, _, err := a.VerifyRequest(good, body); err != nil {
			t.Fatalf("our own signature rejected: %v", err)
		}
	})
}

func FuzzHiBobVerify(f *testing.F) {
	a := &hiBobAdapter{secrets: rawSecrets([]string{bobSecret}), now: time.Now}
	body := readTestdata(f, "hibob/employee_updated.json")
	f.Add(body, SignHiBob(bobSecret, body))
	f.Add([]byte("Ping test"), "")
	f.Add([]byte("{}"), "AAAA")
	f.Fuzz(func(t *testing.T, body []byte, sig string) {
		h := http.Header{}
		h.Set(HeaderBobSignature, sig)
		_, _, err := a.VerifyRequest(h, body)
		inputErrorOnly(t, err)
		if err == nil && strings.TrimSpace(sig) != SignHiBob(bobSecret, body) {
			t.Fatalf("accepted a signature that is not ours: %q", sig)
		}
		h.Set(HeaderBobSignature, SignHiBob(bobSecret, body))
		if _, _, err := a.VerifyRequest(h, body); err != nil {
			t.Fatalf("our own signature rejected: %v", err)
		}
	})
}

// fuzzAPI is an HRIS API that answers every record from testdata.
func fuzzAPI(f *testing.F) string {
	bamboo := readTestdata(f, "bamboohr/api_employee_67890.json")
	bob := readTestdata(f, "hibob/api_person.json")
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if strings.Contains(r.URL.Path, "/people/") {
			w.Write(bob)
			return
		}
		w.Write(bamboo)
	}))
	f.Cleanup(srv.Close)
	return srv.URL
}

// checkEvents validates what an adapter produced; validation may reject it, but only as input.
func checkEvents(t *testing.T, evs []HREvent) {
	for _, ev := range evs {
		_, err := validate(ev)
		inputErrorOnly(t, err)
	}
}

func FuzzCanonicalDecode(f *testing.F) {
	f.Add([]byte(hireBody))
	f.Add([]byte(`{"type":"termination","worker":{"worker_id":"E1","end_date":"2025-02-30"}}`))
	f.Add([]byte(`{"type":"hire","worker":{"worker_id":"E1","worker_type":"robot","manager_id":"E1"}}`))
	f.Add([]byte(`[1,2`))
	f.Fuzz(func(t *testing.T, body []byte) {
		ev, err := canonicalAdapter{}.Decode(context.Background(), Delivery{Body: body})
		inputErrorOnly(t, err)
		if err == nil {
			checkEvents(t, []HREvent{ev})
		}
	})
}

func FuzzBambooHRDecode(f *testing.F) {
	api := fuzzAPI(f)
	ad, err := newBambooHRAdapter("b", SourceConfig{Secrets: []string{bambooKey}, API: APIConfig{BaseURL: api, Token: "k", Timeout: time.Second}})
	if err != nil {
		f.Fatal(err)
	}
	for _, n := range []string{"event_updated", "event_created", "event_deleted", "field_based"} {
		f.Add(readTestdata(f, "bamboohr/"+n+".json"))
	}
	f.Add([]byte(`{"employees":[]}`))
	f.Add([]byte(`{"type":"employee.updated","data":{"employeeId":1.5e300}}`))
	f.Fuzz(func(t *testing.T, body []byte) {
		evs, err := ad.(BatchAdapter).DecodeBatch(context.Background(), Delivery{Body: body})
		inputErrorOnly(t, err)
		checkEvents(t, evs)
	})
}

func FuzzHiBobDecode(f *testing.F) {
	api := fuzzAPI(f)
	ad, err := newHiBobAdapter("b", SourceConfig{Secrets: []string{bobSecret}, API: APIConfig{BaseURL: api, User: "u", Token: "k", Timeout: time.Second}})
	if err != nil {
		f.Fatal(err)
	}
	for _, n := range []string{"employee_updated", "employee_left", "ping", "timeoff"} {
		f.Add(readTestdata(f, "hibob/"+n+".json"))
	}
	f.Add([]byte(`{"type":"employee.updated","data":{"employeeId":"1","fieldsChanged":[{"fieldId":"/work/title"},3]}}`))
	f.Fuzz(func(t *testing.T, body []byte) {
		ev, err := ad.Decode(context.Background(), Delivery{Body: body})
		inputErrorOnly(t, err)
		if err == nil {
			checkEvents(t, []HREvent{ev})
		}
	})
}

func FuzzWorkdayDecode(f *testing.F) {
	for _, n := range []string{"terminate", "hire_contractor"} {
		f.Add(readTestdata(f, "workday/"+n+".json"))
	}
	f.Add([]byte(`{"Worker_Event":{"Business_Process_Type":"Hire","Effective_Date":"2026-13-01","Worker":{}}}`))
	f.Fuzz(func(t *testing.T, body []byte) {
		ev, err := workdayAdapter{}.Decode(context.Background(), Delivery{Body: body})
		inputErrorOnly(t, err)
		if err == nil {
			checkEvents(t, []HREvent{ev})
		}
	})
}

func FuzzRoster(f *testing.F) {
	f.Add(readTestdata(f, "snapshot/roster.csv"), true)
	f.Add(readTestdata(f, "snapshot/roster.json"), false)
	f.Add([]byte("worker_id,\"unterminated\n"), true)
	f.Fuzz(func(t *testing.T, body []byte, isCSV bool) {
		format := intakev1.RosterFormat_ROSTER_FORMAT_JSON
		if isCSV {
			format = intakev1.RosterFormat_ROSTER_FORMAT_CSV
		}
		r, err := parseRoster(body, format)
		inputErrorOnly(t, err)
		for _, row := range r.Workers {
			_, err := validate(HREvent{Type: "job_change", Worker: row.worker()})
			inputErrorOnly(t, err)
		}
	})
}

// FuzzFormToJSON: any form body converts to valid JSON or is a 4xx naming what is wrong.
func FuzzFormToJSON(f *testing.F) {
	f.Add(readTestdata(f, "bamboohr/event_updated.form"))
	f.Add(readTestdata(f, "bamboohr/field_based.form"))
	f.Add([]byte("a[0]=1&a[1]=2&a[b]=3&=x&[]=y&a[=z"))
	f.Fuzz(func(t *testing.T, body []byte) {
		out, err := formToJSON(body)
		inputErrorOnly(t, err)
		if err == nil && !json.Valid(out) {
			t.Fatalf("%q converted to invalid JSON %q", body, out)
		}
	})
}
