/* The report's browser check, injected by tests/test_report.py into a copy of index.html (reports
   never ship it). Once every image has settled (loaded eagerly), it records as JSON in
   #selftest-result: the viewport and document widths (a page wider than its viewport scrolls
   sideways), which images have no pixels, whether clicking a metric header sorts the leaderboard up
   and then down, and which sample rows the first domain filter leaves. */
(function () {
  "use strict";
  var images = Array.prototype.slice.call(document.images);
  var settled = images.map(function (img) {
    img.loading = "eager";
    if (img.complete) return Promise.resolve();
    return new Promise(function (resolve) {
      img.addEventListener("load", resolve);
      img.addEventListener("error", resolve);
    });
  });
  function sortKey(row, index) {
    var cell = row.cells[index];
    if (!cell) return "";
    return cell.hasAttribute("data-sort") ? cell.getAttribute("data-sort") : cell.textContent.trim();
  }
  function column(index) {
    var tbody = document.getElementById("leaderboard-table").tBodies[0];
    return Array.prototype.map.call(tbody.rows, function (r) { return sortKey(r, index); })
      .filter(function (v) { return v !== ""; }).map(Number);
  }
  function ordered(values, sign) {
    return values.every(function (v, i) { return i === 0 || sign * (v - values[i - 1]) >= 0; });
  }
  Promise.all(settled).then(function () {
    var root = document.documentElement;
    var result = {
      viewport_width: window.innerWidth,
      client_width: root.clientWidth,
      scroll_width: root.scrollWidth,
      images: images.length,
      broken: images.filter(function (i) { return !(i.naturalWidth > 0); }).map(function (i) { return i.getAttribute("src"); }),
      grid_image_widths: Array.prototype.map.call(document.querySelectorAll("table.grid img"),
                                                  function (i) { return i.getBoundingClientRect().width; })
    };
    var headers = Array.prototype.slice.call(document.querySelectorAll("#leaderboard-table th[data-metric]"));
    var th = headers.find(function (h) {
      var values = column(h.cellIndex);
      return values.some(function (v) { return v !== values[0]; });
    });
    if (th) {
      th.click();
      var up = column(th.cellIndex);
      th.click();
      var down = column(th.cellIndex);
      result.sort = {column: th.getAttribute("data-metric"), ascending: up, descending: down,
                     ascending_ok: ordered(up, 1), descending_ok: ordered(down, -1)};
    }
    var select = document.querySelector('select[data-filter="domain"]');
    if (select && select.options.length > 1) {
      select.value = select.options[1].value;
      select.dispatchEvent(new Event("change"));
      var rows = Array.prototype.slice.call(document.querySelectorAll("tr[data-sample]"));
      var shown = rows.filter(function (r) { return !r.hidden; });
      result.filter = {key: "domain", value: select.value, shown: shown.length, hidden: rows.length - shown.length,
                       all_match: shown.every(function (r) { return r.getAttribute("data-domain") === select.value; })};
      select.value = "";
      select.dispatchEvent(new Event("change"));
    }
    var out = document.createElement("pre");
    out.id = "selftest-result";
    out.hidden = true;
    out.textContent = JSON.stringify(result);
    document.body.appendChild(out);
  });
})();
