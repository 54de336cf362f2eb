module github.com/tenure-dev/tenure/services/intake

go 1.26
