#include "moelab/analysis/plot.h"

#include <fmt/format.h>

#include <cmath>
#include <cstdlib>
#include <fstream>
#include <sstream>

#include "moelab/util/errors.h"

namespace moelab::analysis {

namespace {

std::string quoted(const std::string& text) {
  std::string out = "\"";
  for (char c : text) {
    if (c == '"' || c == '\\') out += '\\';
    out += c;
  }
  return out + "\"";
}

std::string base_of(const std::string& png) {
  return png.size() > 4 && png.substr(png.size() - 4) == ".png" ? png.substr(0, png.size() - 4) : png;
}

std::string header(const std::string& png, const PlotLabels& labels, int width = 900,
                   int height = 540) {
  return fmt::format(
      "set terminal pngcairo size {},{} enhanced font 'DejaVu Sans,11'\n"
      "set output {}\nset title {} noenhanced\nset xlabel {} noenhanced\nset ylabel {} noenhanced\n"
      "set grid lc rgb '#dddddd'\nset key outside right top noenhanced\n",
      width, height, quoted(png), quoted(labels.title), quoted(labels.xlabel),
      quoted(labels.ylabel));
}

std::string number(double v) { return std::isfinite(v) ? fmt::format("{:.10g}", v) : "NaN"; }

void render(const std::string& png, const std::string& script, const std::string& data) {
  const std::string base = base_of(png);
  std::ofstream(base + ".dat") << data;
  std::ofstream(base + ".gp") << script;
  const std::string command = "gnuplot " + quoted(base + ".gp") + " 2> " + quoted(base + ".log");
  const int status = std::system(command.c_str());
  if (status != 0) {
    std::ifstream log(base + ".log");
    std::stringstream text;
    text << log.rdbuf();
    if (std::system("command -v gnuplot > /dev/null 2>&1") != 0) {
      throw DataError(png + ": gnuplot is not installed (apt-get install gnuplot-nox)");
    }
    throw DataError(png + ": gnuplot failed: " + text.str().substr(0, 400));
  }
}

}  // namespace

void line_plot(const std::string& png, const PlotLabels& labels, const std::vector<Series>& series,
               bool log_y) {
  std::string data, script = header(png, labels);
  if (log_y) script += "set logscale y\nset format y '%g'\n";
  const std::string dat = quoted(base_of(png) + ".dat");
  std::vector<std::string> plots;
  for (size_t i = 0; i < series.size(); ++i) {
    for (size_t j = 0; j < series[i].x.size(); ++j) {
      data += number(series[i].x[j]) + " " + number(series[i].y[j]) + "\n";
    }
    data += "\n\n";
    const int color = series[i].color > 0 ? series[i].color : static_cast<int>(i % 8) + 1;
    plots.push_back(fmt::format(
        "{} index {} using 1:2 with linespoints lw 2 pt 7 ps 0.4 lc {} dt {} title {}", dat, i,
        color, series[i].dashed ? 2 : 1, quoted(series[i].title)));
  }
  script += "plot ";
  for (size_t i = 0; i < plots.size(); ++i) script += (i ? ", \\\n     " : "") + plots[i];
  render(png, script + "\n", data);
}

void bar_plot(const std::string& png, const PlotLabels& labels,
              const std::vector<std::string>& categories, const std::vector<Series>& series) {
  std::string data = "category";
  for (const auto& s : series) data += " " + quoted(s.title);
  data += "\n";
  for (size_t c = 0; c < categories.size(); ++c) {
    data += quoted(categories[c]);
    for (const auto& s : series) data += " " + number(c < s.y.size() ? s.y[c] : 0.0);
    data += "\n";
  }
  std::string script = header(png, labels) +
                       "set style data histograms\nset style histogram clustered gap 1\n"
                       "set style fill solid 0.85 border -1\nset yrange [0:*]\n";
  const std::string dat = quoted(base_of(png) + ".dat");
  script += "plot ";
  for (size_t i = 0; i < series.size(); ++i) {
    script += fmt::format("{}{} using {}:xtic(1) title columnheader({}) lc {}", i ? ", " : "", dat,
                          i + 2, i + 2, i % 8 + 1);
  }
  render(png, script + "\n", data);
}

void heatmap(const std::string& png, const PlotLabels& labels,
             const std::vector<std::string>& row_labels,
             const std::vector<std::string>& column_labels,
             const std::vector<std::vector<double>>& values) {
  std::string data;
  const size_t rows = values.size();
  for (size_t r = 0; r < rows; ++r) {
    for (size_t c = 0; c < values[r].size(); ++c) {
      // Row 0 at the top.
      data += fmt::format("{} {} {}\n", c, rows - 1 - r, number(values[r][c]));
    }
  }
  const int height = 140 + 34 * static_cast<int>(rows);
  const int width = 260 + 70 * static_cast<int>(column_labels.size());
  std::string script = header(png, labels, std::max(width, 520), std::max(height, 360));
  script += "unset grid\nunset key\nset palette defined (0 '#ffffff', 0.5 '#6baed6', 1 '#08306b')\n"
            "set cbrange [0:*]\nset tics nomirror out\nset xtics (";
  for (size_t c = 0; c < column_labels.size(); ++c) {
    script += fmt::format("{}{} {}", c ? ", " : "", quoted(column_labels[c]), c);
  }
  script += ") noenhanced\nset ytics (";
  for (size_t r = 0; r < rows; ++r) {
    script += fmt::format("{}{} {}", r ? ", " : "", quoted(row_labels[r]), rows - 1 - r);
  }
  script += fmt::format(") noenhanced\nset xrange [-0.5:{}]\nset yrange [-0.5:{}]\n",
                        column_labels.size() - 0.5, rows - 0.5);
  const std::string dat = quoted(base_of(png) + ".dat");
  script += fmt::format(
      "plot {} using 1:2:3 with image, '' using 1:2:(sprintf('%.2f', $3)) with labels font ',9'\n",
      dat);
  render(png, script, data);
}

void scatter_plot(const std::string& png, const PlotLabels& labels, const std::vector<double>& x,
                  const std::vector<double>& y, const std::vector<std::string>& names, bool log_x) {
  std::string data;
  for (size_t i = 0; i < x.size(); ++i) {
    data += number(x[i]) + " " + number(y[i]) + " " + quoted(names[i]) + "\n";
  }
  std::string script = header(png, labels) + "unset key\nset offsets graph 0.08, graph 0.25, graph 0.1, graph 0.1\n";
  if (log_x) script += "set logscale x\n";
  const std::string dat = quoted(base_of(png) + ".dat");
  script += fmt::format(
      "plot {} using 1:2 with points pt 7 ps 1.6 lc 2, '' using 1:2:3 with labels offset 1,0.8 "
      "left noenhanced\n",
      dat);
  render(png, script, data);
}

}  // namespace moelab::analysis
