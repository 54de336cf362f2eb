package intake

import (
	"context"
	"strings"
)

// Workday-style worker change: what a Workday outbound integration (a Studio or EIB
// integration on the worker business processes) posts for each completed business process,
// signed with Standard Webhooks by the integration. Field names follow Workday's Get_Workers
// web service; decoding is strict because the integration is authored for tenure.
//
//	{"Worker_Event": {
//	   "Event_ID": "EVT-2026-000123",
//	   "Business_Process_Type": "Terminate Employee",
//	   "Effective_Date": "2026-12-31",
//	   "Effective_Moment": "2026-12-31T17:00:00-06:00",   // optional, wins over Effective_Date
//	   "Reason": "Resignation > Personal",
//	   "Worker": {
//	     "Worker_ID": "21001", "Worker_Type": "Employee",      // or "Contingent_Worker"
//	     "Contingent_Worker_Type": "Contractor",               // Contractor|Consultant|Temp|Intern|Volunteer|Student|Vendor
//	     "Legal_Name": {"First_Name": "Ada", "Last_Name": "Lovelace"},
//	     "Email_Address": "ada@clinic.example",
//	     "Position": {"Job_Profile_ID": "RN-2", "Supervisory_Organization": "Cardiology",
//	                  "Manager_Worker_ID": "21000", "Location": "Boston"},
//	     "Hire_Date": "2025-03-01", "Contract_End_Date": "", "Termination_Date": "2026-12-31",
//	     "Sponsor_Worker_ID": "", "Supplier": ""}}}
type workdayAdapter struct{}

type workdayBody struct {
	WorkerEvent *workdayEvent `json:"Worker_Event"`
}

type workdayEvent struct {
	EventID             string         `json:"Event_ID"`
	BusinessProcessType string         `json:"Business_Process_Type"`
	EffectiveDate       string         `json:"Effective_Date"`
	EffectiveMoment     string         `json:"Effective_Moment"`
	Reason              string         `json:"Reason"`
	Worker              *workdayWorker `json:"Worker"`
}

type workdayWorker struct {
	WorkerID             string `json:"Worker_ID"`
	WorkerType           string `json:"Worker_Type"`
	ContingentWorkerType string `json:"Contingent_Worker_Type"`
	LegalName            struct {
		FirstName string `json:"First_Name"`
		LastName  string `json:"Last_Name"`
	} `json:"Legal_Name"`
	EmailAddress string `json:"Email_Address"`
	Position     struct {
		JobProfileID            string `json:"Job_Profile_ID"`
		SupervisoryOrganization string `json:"Supervisory_Organization"`
		ManagerWorkerID         string `json:"Manager_Worker_ID"`
		Location                string `json:"Location"`
	} `json:"Position"`
	HireDate        string `json:"Hire_Date"`
	ContractEndDate string `json:"Contract_End_Date"`
	TerminationDate string `json:"Termination_Date"`
	SponsorWorkerID string `json:"Sponsor_Worker_ID"`
	Supplier        string `json:"Supplier"`
}

// workdayProcesses maps Workday business process types to canonical types.
var workdayProcesses = map[string]string{
	"hire":                            "hire",
	"hire employee":                   "hire",
	"contract contingent worker":      "hire",
	"rehire":                          "rehire",
	"rehire employee":                 "rehire",
	"change job":                      "job_change",
	"transfer":                        "department_change",
	"change organization assignments": "department_change",
	"change organization assignments for worker": "department_change",
	"change manager":                        "manager_change",
	"assign superior":                       "manager_change",
	"convert contingent worker to employee": "conversion",
	"convert employee to contingent worker": "conversion",
	"terminate employee":                    "termination",
	"termination":                           "termination",
	"end contingent worker contract":        "contract_end",
	"place worker on leave":                 "leave_start",
	"start leave of absence":                "leave_start",
	"return worker from leave":              "leave_end",
	"return from leave":                     "leave_end",
	"rescind termination":                   "termination_rescinded",
	"rescind terminate employee":            "termination_rescinded",
}

func (workdayAdapter) Decode(_ context.Context, d Delivery) (HREvent, error) {
	var b workdayBody
	if err := DecodeStrictJSON(d.Body, &b); err != nil {
		return HREvent{}, err
	}
	e := b.WorkerEvent
	if e == nil {
		return HREvent{}, Unprocessable("Worker_Event", "Worker_Event is required")
	}
	if e.Worker == nil {
		return HREvent{}, Unprocessable("Worker_Event.Worker", "Worker_Event.Worker is required")
	}
	bp := strings.ToLower(strings.Join(strings.Fields(e.BusinessProcessType), " "))
	typ, ok := workdayProcesses[bp]
	if !ok {
		if bp == "" {
			return HREvent{}, Unprocessable("Worker_Event.Business_Process_Type", "Worker_Event.Business_Process_Type is required")
		}
		return HREvent{}, Unprocessable("Worker_Event.Business_Process_Type", "unsupported business process %q", clip(e.BusinessProcessType))
	}
	w := e.Worker
	wt := ""
	switch strings.ToLower(w.WorkerType) {
	case "":
	case "employee":
		wt = "employee"
	case "contingent_worker", "contingent worker":
		switch strings.ToLower(w.ContingentWorkerType) {
		case "", "contractor", "consultant", "independent contractor":
			wt = "contractor"
		case "temp", "temporary":
			wt = "temp"
		case "intern":
			wt = "intern"
		case "volunteer":
			wt = "volunteer"
		case "student":
			wt = "student"
		case "vendor", "supplier", "vendor staff":
			wt = "vendor"
		default:
			return HREvent{}, Unprocessable("Worker_Event.Worker.Contingent_Worker_Type", "unknown Contingent_Worker_Type %q", clip(w.ContingentWorkerType))
		}
	default:
		return HREvent{}, Unprocessable("Worker_Event.Worker.Worker_Type", "unknown Worker_Type %q (Employee or Contingent_Worker)", clip(w.WorkerType))
	}
	end := w.ContractEndDate
	if typ == "termination" && w.TerminationDate != "" {
		end = w.TerminationDate
	}
	ev := HREvent{
		Type: typ,
		Worker: HRWorker{
			WorkerID: w.WorkerID, WorkerType: wt, GivenName: w.LegalName.FirstName, FamilyName: w.LegalName.LastName,
			Email: w.EmailAddress, JobCode: w.Position.JobProfileID, Department: w.Position.SupervisoryOrganization,
			ManagerID: w.Position.ManagerWorkerID, Location: w.Position.Location, StartDate: w.HireDate, EndDate: end,
			SponsorID: w.SponsorWorkerID, VendorOrg: w.Supplier,
		},
		Reason: e.Reason,
	}
	switch {
	case e.EffectiveMoment != "":
		ev.EffectiveTime = e.EffectiveMoment
	case e.EffectiveDate != "":
		if !isDate(e.EffectiveDate) {
			return HREvent{}, Unprocessable("Worker_Event.Effective_Date", "Worker_Event.Effective_Date %q is not a date YYYY-MM-DD", clip(e.EffectiveDate))
		}
		if typ == "termination" || typ == "contract_end" {
			// Workday's termination date is the last day worked: access ends after it.
			ev.EffectiveTime = endOfDate(e.EffectiveDate)
		} else {
			ev.EffectiveTime = e.EffectiveDate + "T00:00:00Z"
		}
	}
	return ev, nil
}

func isDate(s string) bool { return endOfDate(s) != "" }

// workdayFields names the canonical fields as a Workday worker change carries them.
var workdayFields = map[string]string{
	"type":               "Worker_Event.Business_Process_Type",
	"reason":             "Worker_Event.Reason",
	"effective_time":     "Worker_Event.Effective_Moment",
	"worker.worker_id":   "Worker_Event.Worker.Worker_ID",
	"worker.worker_type": "Worker_Event.Worker.Worker_Type",
	"worker.given_name":  "Worker_Event.Worker.Legal_Name.First_Name",
	"worker.family_name": "Worker_Event.Worker.Legal_Name.Last_Name",
	"worker.email":       "Worker_Event.Worker.Email_Address",
	"worker.job_code":    "Worker_Event.Worker.Position.Job_Profile_ID",
	"worker.department":  "Worker_Event.Worker.Position.Supervisory_Organization",
	"worker.manager_id":  "Worker_Event.Worker.Position.Manager_Worker_ID",
	"worker.location":    "Worker_Event.Worker.Position.Location",
	"worker.start_date":  "Worker_Event.Worker.Hire_Date",
	"worker.end_date":    "Worker_Event.Worker.Contract_End_Date",
	"worker.sponsor_id":  "Worker_Event.Worker.Sponsor_Worker_ID",
	"worker.vendor_org":  "Worker_Event.Worker.Supplier",
}

func (workdayAdapter) VendorField(canonical string) string { return workdayFields[canonical] }
