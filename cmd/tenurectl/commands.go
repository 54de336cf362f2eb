package main

import (
	"context"
	"flag"
	"io"
	"sort"
	"strings"
)

// env is what a command gets: its flag set (with the common flags registered), a parse
// function that also collects positional arguments, and ways to reach tenure.
type env struct {
	ctx       context.Context
	fs        *flag.FlagSet
	common    *common
	stdout    io.Writer
	parse     func() error
	pos       func() []string
	connect   func() (*cli, error)
	forWorker func() (*cli, string, error)
}

// command is a tenurectl command defined outside main.go. Register one from an init
// function in its own file, e.g. commands["evidence access"] = command{...}; a name with a
// space makes its first word a group ("tenurectl evidence access ...").
type command struct {
	usage string
	run   func(e *env) error
}

var commands = map[string]command{}

// groups built into main.go.
var builtinGroups = []string{"ledger", "webhook", "worker"}

// groupTakesArgs are groups that are also a command taking a positional argument.
var groupTakesArgs = map[string]bool{"accounts": true}

func isGroup(word string) bool {
	for _, g := range builtinGroups {
		if g == word {
			return true
		}
	}
	for name := range commands {
		if strings.HasPrefix(name, word+" ") {
			return true
		}
	}
	return false
}

func sortedCommands() []string {
	names := make([]string, 0, len(commands))
	for n := range commands {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}
