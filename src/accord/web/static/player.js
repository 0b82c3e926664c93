// Accord's asciicast v2 player: fetches a recording from this server and replays its output
// into a <pre>, keeping carriage returns, backspaces, line clears and screen clears; other
// escape sequences (colours, cursor moves) are dropped. No dependencies, nothing from a CDN.
(function () {
  "use strict";
  // "ob": output that was not UTF-8, its bytes in base64 (Accord's own event code); shown
  // as a terminal would, with replacement characters.
  function bytesText(b64) {
    var raw = atob(b64), bytes = new Uint8Array(raw.length);
    for (var i = 0; i < raw.length; i++) bytes[i] = raw.charCodeAt(i);
    return new TextDecoder("utf-8").decode(bytes);
  }
  function parse(text) {
    var lines = text.split("\n").filter(function (l) { return l.trim(); });
    var header = JSON.parse(lines[0]);
    var events = [];
    for (var i = 1; i < lines.length; i++) {
      var e = JSON.parse(lines[i]);
      if (e[1] === "o") events.push(e);
      else if (e[1] === "ob") events.push([e[0], "o", bytesText(e[2])]);
    }
    return { header: header, events: events };
  }
  function Screen(pre) { this.pre = pre; this.lines = [""]; this.col = 0; }
  Screen.prototype.write = function (s) {
    var i = 0, lines = this.lines;
    while (i < s.length) {
      var c = s[i];
      if (c === "\x1b") {
        var m = /^\x1b(\[[0-9;?]*[ -\/]*[@-~]|\][^\x07\x1b]*(\x07|\x1b\\)|[()][0-9A-Za-z]|[=>78DEHMNOZc])/.exec(s.slice(i));
        if (m) {
          var seq = m[0];
          if (/^\x1b\[[0-9]*K$/.test(seq)) {
            var row = lines.length - 1;
            lines[row] = lines[row].slice(0, this.col);
          } else if (/^\x1b\[(2|3)?J$/.test(seq) || seq === "\x1bc") {
            this.lines = lines = [""]; this.col = 0;
          }
          i += seq.length; continue;
        }
        i++; continue;
      }
      var last = lines.length - 1;
      if (c === "\n") { lines.push(""); this.col = 0; }
      else if (c === "\r") { this.col = 0; }
      else if (c === "\b") { if (this.col > 0) this.col--; }
      else if (c === "\x07") { /* bell */ }
      else {
        var line = lines[last];
        while (line.length < this.col) line += " ";
        lines[last] = line.slice(0, this.col) + c + line.slice(this.col + 1);
        this.col++;
      }
      i++;
    }
    if (lines.length > 2000) this.lines = lines.slice(lines.length - 2000);
    this.pre.textContent = this.lines.join("\n");
    this.pre.scrollTop = this.pre.scrollHeight;
  };
  function setup(box) {
    var pre = box.querySelector("[data-screen]");
    var timer = null;
    function load(then) {
      fetch(box.getAttribute("data-cast"), { credentials: "same-origin" })
        .then(function (r) { return r.text(); })
        .then(function (t) { then(parse(t)); })
        .catch(function (e) { pre.textContent = "cannot load the recording: " + e; });
    }
    box.querySelector("[data-all]").addEventListener("click", function () {
      if (timer) clearTimeout(timer);
      load(function (cast) {
        var screen = new Screen(pre);
        screen.write(cast.events.map(function (e) { return e[2]; }).join(""));
      });
    });
    box.querySelector("[data-play]").addEventListener("click", function () {
      if (timer) clearTimeout(timer);
      var speed = parseFloat(box.querySelector("[data-speed]").value) || 1;
      load(function (cast) {
        var screen = new Screen(pre), i = 0, last = 0;
        function step() {
          if (i >= cast.events.length) { timer = null; return; }
          var e = cast.events[i++];
          screen.write(e[2]);
          var next = cast.events[i];
          var wait = next ? Math.min(Math.max(next[0] - e[0], 0), 2) / speed : 0;
          timer = setTimeout(step, wait * 1000);
        }
        step();
      });
    });
  }
  document.addEventListener("DOMContentLoaded", function () {
    var boxes = document.querySelectorAll(".player[data-cast]");
    for (var i = 0; i < boxes.length; i++) setup(boxes[i]);
  });
})();
