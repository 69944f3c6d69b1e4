// Charon UI: actions posted as JSON to /api/v1, the backfill preview, and the log viewer
// that follows a running attempt. Live regions are polled by htmx (see the pages).
(function () {
  "use strict";

  function notice(text, error) {
    var box = document.getElementById("notice");
    if (!box) return;
    box.textContent = text;
    box.className = error ? "error" : "ok";
    box.setAttribute("role", error ? "alert" : "status");
  }

  function refresh() {
    var live = document.getElementById("live");
    if (live && window.htmx) window.htmx.trigger(live, "refresh");
  }

  // A form's fields as the API's JSON: numbers and booleans typed, env lines as a map.
  function json(form) {
    var body = {};
    Array.prototype.forEach.call(form.elements, function (el) {
      if (!el.name) return;
      var kind = el.getAttribute("data-kind");
      if (kind === "bool") { body[el.name] = el.checked; return; }
      if (kind === "number") { if (el.value !== "") body[el.name] = Number(el.value); return; }
      if (kind === "env") {
        var env = {};
        el.value.split("\n").forEach(function (line) {
          line = line.trim();
          if (!line) return;
          var at = line.indexOf("=");
          if (at < 0) env[line] = ""; else env[line.slice(0, at)] = line.slice(at + 1);
        });
        body[el.name] = env;
        return;
      }
      if (el.value !== "") body[el.name] = el.value;
    });
    return body;
  }

  function post(url, body) {
    return fetch(url, {
      method: "POST",
      credentials: "same-origin",
      headers: { "Content-Type": "application/json", "Accept": "application/json" },
      body: JSON.stringify(body || {})
    }).then(function (response) {
      return response.json().catch(function () { return {}; }).then(function (data) {
        if (!response.ok) {
          var error = new Error(data.error || ("HTTP " + response.status));
          error.field = data.field;
          throw error;
        }
        return data;
      });
    });
  }

  function done(form, data) {
    var what = form.getAttribute("data-done") || "Done";
    if (data.instance && form.getAttribute("data-api").slice(-8) === "/trigger") {
      var ns = form.getAttribute("data-api").split("/")[4];
      notice(what + ": " + data.instance, false);
      var link = document.createElement("a");
      link.href = "/namespaces/" + encodeURIComponent(ns) + "/instances/" + encodeURIComponent(data.instance);
      link.textContent = " open " + data.instance;
      link.setAttribute("data-new-instance", data.instance);
      document.getElementById("notice").appendChild(link);
    } else if (data.name && form.hasAttribute("data-preview")) {
      var nsb = form.getAttribute("data-api").split("/")[4];
      notice(what + ": " + data.name, false);
      var a = document.createElement("a");
      a.href = "/namespaces/" + encodeURIComponent(nsb) + "/backfills/" + encodeURIComponent(data.name);
      a.textContent = " open " + data.name;
      a.setAttribute("data-new-backfill", data.name);
      document.getElementById("notice").appendChild(a);
    } else {
      notice(what, false);
    }
    refresh();
  }

  function fail(error) {
    notice(error.message + (error.field ? " (field " + error.field + ")" : ""), true);
  }

  document.addEventListener("submit", function (event) {
    var form = event.target;
    if (!form.hasAttribute("data-api")) return;
    event.preventDefault();
    post(form.getAttribute("data-api"), json(form)).then(function (data) { done(form, data); }, fail);
  });

  document.addEventListener("click", function (event) {
    var button = event.target.closest("button");
    if (!button) return;
    if (button.hasAttribute("data-post")) {
      var question = button.getAttribute("data-confirm");
      if (question && !window.confirm(question)) return;
      post(button.getAttribute("data-post"), {}).then(function () {
        notice(button.getAttribute("data-done") || "Done", false);
        // The buttons offered depend on the new state: reload them with the page.
        setTimeout(function () { window.location.reload(); }, 600);
      }, fail);
    } else if (button.getAttribute("data-action") === "preview") {
      var form = button.form;
      var out = form.querySelector(".preview");
      post(form.getAttribute("data-api") + "?dryRun=true", json(form)).then(function (data) {
        var shown = data.partitions.slice(0, 12);
        out.textContent = "";
        var p = document.createElement("p");
        p.setAttribute("data-preview-count", data.count);
        p.textContent = data.count + " partitions will run as " + data.name + ":";
        out.appendChild(p);
        var list = document.createElement("ol");
        shown.forEach(function (partition) {
          var li = document.createElement("li");
          li.textContent = partition;
          list.appendChild(li);
        });
        out.appendChild(list);
        if (data.count > shown.length) {
          var more = document.createElement("p");
          more.textContent = "… and " + (data.count - shown.length) + " more, to " + data.partitions[data.partitions.length - 1];
          out.appendChild(more);
        }
      }, function (error) {
        out.textContent = error.message;
        fail(error);
      });
    }
  });

  // The log viewer: polls the log API with its cursor until the attempt's log is complete;
  // following the newest attempt, it moves on to the next one when a retry starts.
  function follow(pre) {
    var url = pre.getAttribute("data-log-url");
    var select = document.querySelector("[data-log-attempt]");
    var status = document.querySelector("[data-log-status]");
    var cursor = 0, timer = null, generation = 0, shown = null;
    function poll(mine) {
      var chosen = select && select.value ? select.value : "";
      var attempt = chosen ? "&attempt=" + chosen : (shown == null ? "" : "&attempt=" + shown);
      fetch(url + "?cursor=" + cursor + attempt, { credentials: "same-origin" })
        .then(function (r) { return r.json().then(function (d) { if (!r.ok) throw new Error(d.error); return d; }); })
        .then(function (data) {
          if (mine !== generation) return;
          var atBottom = pre.scrollTop + pre.clientHeight >= pre.scrollHeight - 4;
          if (data.lines.length) pre.appendChild(document.createTextNode(data.lines.join("\n") + "\n"));
          if (atBottom) pre.scrollTop = pre.scrollHeight;
          cursor = data.cursor;
          shown = data.attempt;
          if (status) status.textContent = data.attempt == null ? "waiting for the first attempt" :
            ("attempt " + data.attempt + (data.complete ? ": complete" : ": following"));
          pre.setAttribute("data-complete", data.complete ? "true" : "false");
          if (!data.complete) { timer = setTimeout(function () { poll(mine); }, 1000); return; }
          if (chosen || data.finished) return;
          // Complete, but the instance goes on: look for a newer attempt now and then.
          timer = setTimeout(function () { newest(mine); }, 2000);
        }, function (error) {
          if (status) status.textContent = error.message;
          if (mine === generation) timer = setTimeout(function () { poll(mine); }, 3000);
        });
    }
    function newest(mine) {
      fetch(url + "?cursor=0", { credentials: "same-origin" })
        .then(function (r) { return r.json(); })
        .then(function (data) {
          if (mine !== generation) return;
          if (data.attempt != null && data.attempt !== shown) { restart(); return; }
          if (!data.finished) timer = setTimeout(function () { newest(mine); }, 2000);
        }, function () { if (mine === generation) timer = setTimeout(function () { newest(mine); }, 3000); });
    }
    function restart() {
      clearTimeout(timer);
      generation += 1;
      cursor = 0;
      shown = null;
      pre.textContent = "";
      poll(generation);
    }
    if (select) select.addEventListener("change", restart);
    poll(generation);
  }

  document.addEventListener("DOMContentLoaded", function () {
    var pre = document.getElementById("log");
    if (pre) follow(pre);
  });
})();
