/* Sorting (click a leaderboard header: numbers numerically, empty cells last; again to reverse) and
   the dataset / domain / style filters, in plain JS: the page works from disk with no network. */
(function () {
  "use strict";
  function key(row, index) {
    var cell = row.cells[index];
    if (!cell) return "";
    return cell.hasAttribute("data-sort") ? cell.getAttribute("data-sort") : cell.textContent.trim();
  }
  function compare(a, b) {
    var x = Number(a), y = Number(b);
    if (a !== "" && b !== "" && !isNaN(x) && !isNaN(y)) return x - y;
    return a.localeCompare(b);
  }
  function sortBy(th) {
    var tbody = th.closest("table").tBodies[0];
    var index = Array.prototype.indexOf.call(th.parentNode.cells, th);
    var ascending = th.getAttribute("aria-sort") !== "ascending";
    Array.prototype.forEach.call(th.parentNode.cells, function (c) { c.removeAttribute("aria-sort"); });
    th.setAttribute("aria-sort", ascending ? "ascending" : "descending");
    var rows = Array.prototype.slice.call(tbody.rows);
    rows.sort(function (r1, r2) {
      var a = key(r1, index), b = key(r2, index);
      if (a === "" || b === "") return (a === "") - (b === "");  /* empty cells last */
      return ascending ? compare(a, b) : compare(b, a);
    });
    rows.forEach(function (r) { tbody.appendChild(r); });
  }
  document.querySelectorAll("table.sortable th").forEach(function (th) {
    th.addEventListener("click", function () { sortBy(th); });
  });
  var selects = document.querySelectorAll("select[data-filter]");
  function applyFilters() {
    var chosen = {};
    selects.forEach(function (s) { if (s.value) chosen[s.getAttribute("data-filter")] = s.value; });
    document.querySelectorAll("[data-filterable]").forEach(function (el) {
      el.hidden = Object.keys(chosen).some(function (k) {
        var v = el.getAttribute("data-" + k);
        return v !== null && v !== chosen[k];
      });
    });
  }
  selects.forEach(function (s) { s.addEventListener("change", applyFilters); });

})();
